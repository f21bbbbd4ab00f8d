"""A tiny model through the slot decoder, for the tests that check a row decodes and rates the
same alone as among others (tests/serving/engine/cpu/test_fp16_weights.py,
tests/serving/engine/cpu/test_step_matmuls.py)."""

from __future__ import annotations

import torch

from serving.engine.cpu.slot_decoding import RowRequest, SlotBatch

# what run_rows gives each prompt: its tokens and rating probabilities
Decoded = tuple[list[int], torch.Tensor]


def run_rows(
    model: torch.nn.Module, prompts: list[list[int]], step_kernels: bool = True
) -> list[Decoded]:
    """``prompts`` admitted in order into one 5-slot batch (a 96-token vocabulary, eos 95, a
    3-token rating suffix) and stepped until every row ended: each prompt's tokens and rating.
    The rating pass reads the keys and values every decode step wrote, so its probabilities
    show any bit a step gave otherwise."""
    batch = SlotBatch(
        model,
        slots=5,
        width=12,
        max_new_tokens=10,
        pad_id=0,
        eos_id=95,
        rating_suffix=[40, 41, 42],
        score_ids=list(range(10, 19)),
        step_kernels=step_kernels,
    )
    assert (batch.step_ops is not None) == step_kernels
    outs = {}
    for i, ids in enumerate(prompts):
        ended = batch.admit(RowRequest(ids, 10, (), tag=i))
        if ended is not None:
            outs[i] = ended
    while batch.active:
        for ended in batch.step():
            outs[ended.tag] = ended
    return [(outs[i].tokens, outs[i].rating_probs) for i in range(len(prompts))]


def assert_alone_as_together(model: torch.nn.Module, step_kernels: bool = True) -> None:
    """Five random prompts decoded together, then each alone: the same tokens and ratings."""
    generator = torch.Generator().manual_seed(12)
    prompts = [torch.randint(1, 95, (n,), generator=generator).tolist() for n in (5, 9, 12, 3, 7)]
    together = run_rows(model, prompts, step_kernels)
    for i, ids in enumerate(prompts):
        [(tokens, probs)] = run_rows(model, [ids], step_kernels)
        assert tokens == together[i][0] and torch.equal(probs, together[i][1]), i
