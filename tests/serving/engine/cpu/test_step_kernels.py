"""The decode step's compiled adds, norms, rotary embeddings, cache writes and a bf16 MLP's
SiLU product (serving/engine/cpu/kernels/step_ops.c): PyTorch's bits for every shape and layout the
engine gives them,
the vector width of PyTorch's sums found on this machine (and a wrong one caught), and PyTorch's
ops kept where the kernels do not apply. The engine-level checks (every decode step, prompt and
rating pass of a run bit for bit against the model's forward) are in
tests/serving/engine/test_continuous_batching.py."""

from __future__ import annotations

import logging

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.models.llama import modeling_llama

from serving.engine.cpu import kernels
from serving.engine.cpu.kernels import step_ops

pytestmark = [
    pytest.mark.unit,
    pytest.mark.skipif(not kernels.available(), reason="no C compiler here"),
]
DTYPES = [torch.bfloat16, torch.float32]


@pytest.fixture(scope="module")
def ops() -> step_ops.StepOps:
    found = step_ops.load()
    assert found is not None, "the kernels do not give PyTorch's bits on this CPU"
    return found


def _wide(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Values over many orders of magnitude, where another summation order shows."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator) * torch.exp(
        3 * torch.randn(shape, generator=generator)
    )


@pytest.mark.parametrize("hidden", [576, 1000, 4096, 8192])
def test_the_width_found_gives_pytorchs_mean_of_squares_and_others_do_not(ops, hidden) -> None:  # type: ignore[no-untyped-def]
    x = _wide((16, 1, hidden), seed=hidden)
    expected = x.pow(2).mean(-1).reshape(-1)
    got = {}
    for lanes in (4, 8, 16):
        out = torch.empty(16)
        status = ops.library.newsdesk_mean_square(x.data_ptr(), out.data_ptr(), 16, hidden, lanes)
        assert status == 0
        got[lanes] = out
    assert torch.equal(got[ops.lanes], expected)
    assert any(not torch.equal(out, expected) for lanes, out in got.items() if lanes != ops.lanes)


def _norm(hidden: int, dtype: torch.dtype, seed: int) -> modeling_llama.LlamaRMSNorm:
    norm = modeling_llama.LlamaRMSNorm(hidden, eps=1e-5).to(dtype)
    generator = torch.Generator().manual_seed(seed)
    norm.weight.data = (torch.rand(hidden, generator=generator) + 0.5).to(dtype)
    return norm


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("shape", "hidden"), [((2, 1), 576), ((16, 1), 960), ((1, 437), 576), ((1, 40), 2048)]
)
def test_add_rmsnorm_gives_the_residual_add_and_llama_rmsnorm_bits(
    ops, dtype, shape, hidden
) -> None:  # type: ignore[no-untyped-def]
    """Decode-step rows and a prompt's positions (parallel over threads), several widths."""
    x = (_wide((*shape, hidden), seed=1) / 50).to(dtype)
    delta = torch.randn((*shape, hidden), generator=torch.Generator().manual_seed(2)).to(dtype)
    norm = _norm(hidden, dtype, seed=3)
    residual, normed = ops.add_rmsnorm(x, delta, norm)
    assert torch.equal(residual, x + delta)
    assert torch.equal(normed, norm(x + delta))
    alone, normed_alone = ops.add_rmsnorm(x, None, norm)
    assert alone is x and torch.equal(normed_alone, norm(x))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("rows", "positions", "slot", "heads", "kv_heads", "head_dim"),
    [(3, 1, None, 9, 3, 64), (16, 1, None, 8, 2, 128), (1, 437, 2, 9, 3, 64), (1, 40, 0, 4, 4, 32)],
)
def test_rope_store_gives_transformers_rotary_embedding_and_cache_writes(  # type: ignore[no-untyped-def]
    ops, dtype, rows, positions, slot, heads, kv_heads, head_dim
) -> None:
    """A decode step (row i in slot i) and one row's positions (a prompt, a rating pass) in
    one slot, from strided q/k/v (a packed matmul's columns), as the model computes them and
    as the slot cache's update writes them; other columns untouched."""
    generator = torch.Generator().manual_seed(4)
    sizes = [heads * head_dim, kv_heads * head_dim, kv_heads * head_dim]
    q, k, v = (
        torch.randn((rows, positions, sum(sizes)), generator=generator).to(dtype).split(sizes, -1)
    )
    angles = torch.randn((rows, positions, head_dim), generator=generator) * 100
    cos, sin = angles.cos().to(dtype), angles.sin().to(dtype)
    slots, capacity = 17, 500
    caches = [
        torch.randn((slots, kv_heads, capacity, head_dim), generator=generator).to(dtype)
        for _ in "kv"
    ]
    before = [c.clone() for c in caches]
    columns = torch.randperm(capacity, generator=generator)[: rows * positions]
    query = ops.rope_store(q, k, v, cos, sin, *caches, columns, head_dim, slot)

    shape = (rows, positions, -1, head_dim)
    want_q, want_k = modeling_llama.apply_rotary_pos_emb(
        q.reshape(shape).transpose(1, 2), k.reshape(shape).transpose(1, 2), cos, sin
    )
    want_v = v.reshape(shape).transpose(1, 2)
    assert query.dtype == torch.float32 and torch.equal(query, want_q.float())
    for cache, old, want in zip(caches, before, (want_k, want_v), strict=True):
        expected = old.clone()
        if slot is None:
            expected[torch.arange(rows), :, columns] = want[:, :, 0]
        else:
            expected[slot][:, columns] = want[0]
        assert torch.equal(cache, expected)


@pytest.mark.parametrize(("rows", "n"), [(1, 1536), (16, 1536), (436, 1536), (42, 100)])
def test_silu_mul_gives_silu_then_product_bits(ops, rows, n) -> None:  # type: ignore[no-untyped-def]
    """A bf16 MLP's F.silu(gate) * up in one pass: the bits of the two ops, on the strided
    halves of one gate/up matmul (a decode step's rows, a prompt's, a width with a scalar
    tail), with gates over every bf16 value (subnormals, infinities, NaNs)."""
    assert ops.silu is not None, "the fused product does not give PyTorch's bits here"
    generator = torch.Generator().manual_seed(rows + n)
    both = (torch.randn((rows, 2 * n), generator=generator) * 4).to(torch.bfloat16)
    times = -(-rows * n // 65536)  # every value at least once where the rows hold them all
    every = torch.randperm(65536, generator=generator).repeat(times)[: rows * n]
    every = every.to(torch.int16)
    both[:, :n] = every.view(torch.bfloat16).reshape(rows, n)
    gate, up = both.split(n, -1)
    want = torch.nn.functional.silu(gate) * up
    got = ops.silu_mul(gate, up)
    assert got.shape == want.shape
    assert torch.equal(got.view(torch.int16), want.view(torch.int16))
    # contiguous operands of another row stride too
    again = ops.silu_mul(gate.contiguous(), up.contiguous())
    assert torch.equal(again.view(torch.int16), want.view(torch.int16))


def test_a_silu_product_that_differs_keeps_f_silu_and_the_other_ops(monkeypatch, caplog) -> None:  # type: ignore[no-untyped-def]
    """Where the fused product's bits differ from PyTorch's (another PyTorch's SiLU), load
    keeps the other operations and drops it: the step computes F.silu and the product."""
    monkeypatch.setattr(step_ops, "_silu_table", lambda: torch.zeros(65538, dtype=torch.bfloat16))
    with caplog.at_level(logging.WARNING):
        found = step_ops.load.__wrapped__()
    assert found is not None and found.silu is None
    assert "F.silu instead" in caplog.text


def test_models_they_do_not_fit_keep_pytorchs_ops() -> None:
    config = LlamaConfig(
        vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2,
    )  # fmt: skip
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    assert step_ops.handles(model, torch.bfloat16)
    assert not step_ops.handles(model, torch.float32)  # a cache of another dtype
    assert not step_ops.handles(model.to(torch.float16), torch.float16)

    class OtherNorm(modeling_llama.LlamaRMSNorm):
        pass

    model = model.to(torch.bfloat16)
    model.model.norm.__class__ = OtherNorm  # a norm that may compute something else
    assert not step_ops.handles(model, torch.bfloat16)


def test_a_width_that_does_not_give_pytorchs_bits_keeps_pytorchs_ops(monkeypatch, caplog) -> None:  # type: ignore[no-untyped-def]
    """Where the probe's width disagrees (another PyTorch, another CPU), load says so and
    gives None: the lean step then runs PyTorch's ops."""
    found = step_ops.load()
    assert found is not None
    wrong = next(lanes for lanes in (4, 8, 16) if lanes != found.lanes)
    monkeypatch.setattr(step_ops, "_width", lambda library: wrong)
    with caplog.at_level(logging.WARNING):
        assert step_ops.load.__wrapped__() is None
    assert "PyTorch's ops instead" in caplog.text
