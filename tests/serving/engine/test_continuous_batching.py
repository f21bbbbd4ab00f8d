"""Continuous batching with the real engine: the slot decoder gives an article the same
tokens and rating alone, in a batch, or joining mid-way; the continuous loop gives the same
Results as the batch path; the Summarizer answers an article that arrives while others decode
without waiting for them to finish."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import torch

from core.article import Article
from serving.deployments.summarizer import Summarizer
from serving.engine.continuous import ContinuousBatcher
from serving.engine.cpu.slot_decoding import RowOutput, RowRequest, SlotBatch
from serving.model.prompt import build_prompt
from serving.model.result import ArticleError, Result
from train.corpus import headline, lee_articles

NEW_TOKENS = 24


@pytest.fixture(scope="module")
def lee(engine_settings) -> list[Article]:  # type: ignore[no-untyped-def]
    texts = sorted(lee_articles(engine_settings.resolved_state_dir()), key=len)
    picks = [texts[int(q * (len(texts) - 1))] for q in (0.05, 0.3, 0.5, 0.7, 0.95)]
    return [Article(id=i, title=headline(t), text=t, source="ABC") for i, t in enumerate(picks)]


def _slots(engine, slots: int) -> SlotBatch:  # type: ignore[no-untyped-def]
    return engine.decoder.slot_batch(slots, NEW_TOKENS)


def _run(engine, prompts, order: list[int], joins: dict[int, int], slots: int):  # type: ignore[no-untyped-def]
    """Decode ``order``'s prompts; prompt i is admitted at step ``joins.get(i, 0)`` or later,
    when a slot is free. Returns {i: RowOutput}."""
    batch = _slots(engine, slots)
    out: dict[int, RowOutput] = {}
    queue, step = list(order), 0
    while queue or batch.active:
        while queue and batch.free and step >= joins.get(queue[0], 0):
            i = queue.pop(0)
            ended = batch.admit(
                RowRequest(prompts[i], NEW_TOKENS, engine.decoder.first_suppress, tag=i)
            )
            if ended is not None:
                out[i] = ended
        for ended in batch.step():
            out[ended.tag] = ended
        step += 1
    return out


def test_an_article_decodes_the_same_alone_batched_or_joining_mid_way(engine, lee) -> None:  # type: ignore[no-untyped-def]
    prompts = [build_prompt(engine.tokenizer, a, engine.profile.max_prompt_tokens).ids for a in lee]
    together = _run(engine, prompts, [0, 1, 2, 3, 4], {}, slots=5)
    # three slots, articles arriving at different steps, rows leaving and their slots reused
    staggered = _run(engine, prompts, [2, 0, 4, 1, 3], {0: 3, 4: 7, 1: 9, 3: 12}, slots=3)
    for i in range(len(lee)):
        alone = _run(engine, prompts, [i], {}, slots=2)[i]
        assert together[i].tokens == staggered[i].tokens == alone.tokens, i
        assert torch.equal(together[i].rating_probs, alone.rating_probs), i
        assert torch.equal(staggered[i].rating_probs, alone.rating_probs), i
    # the batch path decodes through the same slots: same tokens and ratings
    batch = engine.decoder.decode(prompts, NEW_TOKENS)
    assert batch.tokens == [together[i].tokens for i in range(len(lee))]
    assert torch.equal(
        batch.rating_probs, torch.stack([together[i].rating_probs for i in range(5)])
    )


def _cache_of(layers, restore: list[torch.Tensor] | None = None) -> list[torch.Tensor]:  # type: ignore[no-untyped-def]
    """A copy of the slot cache's keys and values; with ``restore``, the cache is then set
    back to that earlier copy (so that the model's own forward can write the same step)."""
    buffers = [b for layer in layers for b in (layer.key_buffer, layer.value_buffer)]
    copy = [b.clone() for b in buffers]
    for buffer, old in zip(buffers, restore or [], strict=False):
        buffer.copy_(old)
    return copy


def test_the_lean_decode_step_gives_the_models_own_bits(engine, lee, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """serving.engine.cpu.lean_step runs the engine's decode steps (the default model is plain LLaMA
    on the engine's attention), with its adds, norms, rotary embeddings and cache writes in C
    (serving.engine.cpu.kernels.step_ops): at every step of a run with rows joining and leaving, its
    logits and the keys and values it writes are the model's own forward's, bit for bit."""
    from transformers.cache_utils import Cache

    from serving.engine.cpu import lean_step, packed_linear
    from serving.engine.cpu.decoding import _logits

    assert lean_step.applies(engine.decoder.model)
    rows = []
    real = lean_step.decode_logits

    def checked(model, ids, positions, mask, layers, ops):  # type: ignore[no-untyped-def]
        assert ops is not None  # the compiled adds, norms, rotary and cache writes (step_ops)
        before = _cache_of(layers)
        ours = real(model, ids, positions, mask, layers, ops)
        written = _cache_of(layers, restore=before)
        with packed_linear.decode_rows():  # the matmuls as a step runs them
            theirs = _logits(
                model,
                input_ids=ids,
                attention_mask=mask,
                position_ids=positions,
                cache=Cache(layers=list(layers)),
            )
        assert torch.equal(ours, theirs)
        assert all(map(torch.equal, _cache_of(layers), written))
        rows.append(ids.shape[0])
        return ours

    monkeypatch.setattr(lean_step, "decode_logits", checked)
    prompts = [build_prompt(engine.tokenizer, a, engine.profile.max_prompt_tokens).ids for a in lee]
    out = _run(engine, prompts, [2, 0, 4, 1, 3], {0: 3, 4: 7, 1: 9}, slots=3)
    assert len(out) == len(lee)
    # it ran, alone (beside the idle row, or without one where steps read fp16 panels) and full
    lone = 1 if _slots(engine, 3).lone_row_alone else 2
    assert len(rows) >= NEW_TOKENS and {lone, 3} <= set(rows), rows


def test_compiled_prompt_and_rating_passes_give_the_models_own_bits(
    engine, lee, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    """A row's prefill, and the rating passes of the rows that end at one step (together, one
    batch of matmuls), run through serving.engine.cpu.lean_step.rows_logits (the compiled adds,
    norms, rotary embeddings and cache writes): at every call of a run, each row's logits and the
    keys and values it writes are the model's own forward's over that row's view of the
    cache, run alone."""
    from transformers.cache_utils import Cache

    from serving.engine.cpu import lean_step
    from serving.engine.cpu.decoding import _logits

    calls = []
    real = lean_step.rows_logits

    def checked(model, ids, positions, masks, layers, slots, starts, ops):  # type: ignore[no-untyped-def]
        assert ops is not None
        before = _cache_of(layers)
        ours = real(model, ids, positions, masks, layers, slots, starts, ops)
        written = _cache_of(layers, restore=before)
        theirs = []
        for i, (slot, start) in enumerate(zip(slots, starts, strict=True)):
            view = Cache(layers=[layer.row(slot, start) for layer in layers])
            theirs.append(
                _logits(
                    model,
                    input_ids=ids[i : i + 1],
                    attention_mask=masks[i],
                    position_ids=positions[i : i + 1],
                    cache=view,
                )
            )
        assert torch.equal(ours, torch.cat(theirs))
        assert all(map(torch.equal, _cache_of(layers), written))
        calls.append((*ids.shape, min(starts)))
        return ours

    monkeypatch.setattr(lean_step, "rows_logits", checked)
    prompts = [build_prompt(engine.tokenizer, a, engine.profile.max_prompt_tokens).ids for a in lee]
    # 2 and 0 start together, 4 joins at step 7, 1 and 3 take the slots 2 and 0 leave
    out = _run(engine, prompts, [2, 0, 4, 1, 3], {4: 7}, slots=3)
    assert len(out) == len(lee)
    # every prompt and every rating pass went through it (rating: eos + suffix, ~40 tokens)
    assert sum(rows for rows, _, _ in calls) == 2 * len(lee), calls
    # and rows that ended at the same step were rated together, where this CPU's matmuls
    # give each row its bits in a block (lean_step.rates_together), else one at a time
    # (a rating pass starts after the prompt's columns)
    end = engine.profile.max_prompt_tokens
    rating = [(rows, length) for rows, length, start in calls if start >= end]
    together = _slots(engine, 3).shares_rating_matmuls(rating[0][1])
    assert any(rows >= 2 for rows, _ in rating) == together, (calls, together)


def _exact(outcome: Result | ArticleError) -> dict:
    return outcome.model_dump(exclude={"timings"})


def test_the_continuous_loop_gives_the_batch_paths_results(engine, lee) -> None:  # type: ignore[no-untyped-def]
    articles = [*lee[:3], Article(id=99, title="empty", text="   ")]
    expected = engine.summarize(articles)
    batcher = ContinuousBatcher(engine, slots=2)  # fewer slots than articles: some wait
    loop = threading.Thread(target=batcher.run, daemon=True)
    loop.start()
    try:
        futures = []
        for article in articles:
            futures.append(batcher.submit(article))
            time.sleep(0.3)
        got = [f.result(timeout=600) for f in futures]
    finally:
        batcher.stop()
        loop.join(timeout=30)
    assert [_exact(o) for o in got] == [_exact(o) for o in expected]
    assert isinstance(got[-1], ArticleError) and got[-1].code == "empty_input"
    info = batcher.info()
    assert info["admitted"] == 3 and info["finished"] == 3 and info["active"] == 0
    assert max(int(k) for k in info["active_rows_per_step"]) <= 2


async def test_a_late_article_is_answered_without_waiting_for_the_batch(  # type: ignore[no-untyped-def]
    summarizer: Summarizer, lee
) -> None:
    assert summarizer.info()["continuous"] is not None
    await summarizer.reconfigure({"max_batch_size": 4, "batch_wait_timeout_s": 0.01})
    short = Article(
        id=50,
        title="Council approves new library",
        text="The city council approved a new public library on Tuesday. Construction starts "
        "in March and the library opens next year.",
        source="Test",
    )
    first = asyncio.ensure_future(summarizer.summarize(lee[4]))  # the longest article
    batcher = summarizer._batcher
    assert batcher is not None
    while batcher.steps < 3:  # noqa: ASYNC110 (the loop's counter, on another thread)
        await asyncio.sleep(0.05)
    late = await summarizer.summarize(short)
    assert isinstance(late, Result)
    # it joined the running decode loop beside the first article (steps with 2 rows), and
    # waited for a step boundary, not for the first article's whole decode
    assert "2" in batcher.info()["active_rows_per_step"]
    assert late.timings.queue_ms < late.timings.generate_ms
    alone = await summarizer.summarize(short)  # served again (no cache here): same Result
    assert _exact(alone) == _exact(late)
    await first
