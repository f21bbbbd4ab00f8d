"""The engine's attention kernels (serving/engine/cpu/kernels), over a bf16 model's cache and an
fp32 model's: PyTorch's attention to fp32 rounding, each row's bits independent of the rows beside
it (decode) and of the other queries of its tile (prefill), columns outside a row's mask never
read, the portable C build and the AVX2 one giving the native build's bits, and the engine's
attention sending the slot cache to them. A prompt's attention in bf16 products, on AMX tiles
or in AVX512-BF16 dot products where this CPU has them: close to the loops' accuracy, the same
invariance."""

from __future__ import annotations

import pytest
import torch

from serving.engine.cpu import kernels
from serving.engine.cpu.attention import (
    _decode_attention,
    _prefill_attention,
    engine_attention,
    pytorch_attention,
    set_prefill_mode,
)

needs_kernel = pytest.mark.skipif(not kernels.available(), reason="no C compiler here")
pytestmark = [pytest.mark.unit, needs_kernel]

# (heads, kv heads, head dim): SmolLM2-135M's (the vectorized path), and shapes that take the
# portable one (other groups, a 32-wide head, one kv head per query head)
SHAPES = [(9, 3, 64), (8, 2, 64), (4, 4, 32), (6, 3, 48)]
# a bf16 model's slot cache and an fp32 model's (the model's dtype, queries included)
DTYPES = [torch.bfloat16, torch.float32]


def _case(  # type: ignore[no-untyped-def]
    rows: int,
    heads: int,
    kv_heads: int,
    dim: int,
    capacity: int = 300,
    seed: int = 0,
    dtype: torch.dtype = torch.bfloat16,
):
    generator = torch.Generator().manual_seed(seed)
    query = torch.randn(rows, heads, 1, dim, generator=generator).to(dtype)
    key = torch.randn(rows, kv_heads, capacity, dim, generator=generator).to(dtype)
    value = torch.randn(rows, kv_heads, capacity, dim, generator=generator).to(dtype)
    # each row: a 20-column prefix, padding, its prompt, then the columns it has generated
    mask = torch.zeros(rows, capacity, dtype=torch.bool)
    for row in range(rows):
        mask[row, :20] = True
        mask[row, 40 + 7 * row : 200 + 3 * row] = True
    return query, key, value, mask[:, None, None, :]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("heads", "kv_heads", "dim"), SHAPES)
def test_kernel_matches_pytorch_attention_to_fp32_rounding(
    heads: int, kv_heads: int, dim: int, dtype: torch.dtype
) -> None:
    query, key, value, mask = _case(5, heads, kv_heads, dim, dtype=dtype)
    out = kernels.decode_attention(query, key, value, mask, dim**-0.5)
    assert out is not None and out.shape == (5, 1, heads, dim) and out.dtype == torch.float32
    exact = _decode_attention(
        query.double(), key.double(), value.double(), mask, dim**-0.5
    )  # fp64: what both approximate
    torch_fp32 = _decode_attention(query.float(), key.float(), value.float(), mask, dim**-0.5)
    kernel_error = (out.double() - exact).abs().max().item()
    torch_error = (torch_fp32.double() - exact).abs().max().item()
    assert kernel_error < 1e-6, kernel_error
    assert kernel_error < 4 * torch_error + 1e-7, (kernel_error, torch_error)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("heads", "kv_heads", "dim"), SHAPES)
def test_a_rows_bits_do_not_depend_on_the_rows_beside_it(
    heads: int, kv_heads: int, dim: int, dtype: torch.dtype
) -> None:
    query, key, value, mask = _case(9, heads, kv_heads, dim, dtype=dtype)
    together = kernels.decode_attention(query, key, value, mask, 0.125)
    assert together is not None
    for row in (0, 4, 8):
        alone = kernels.decode_attention(
            query[row : row + 1],
            key[row : row + 1],
            value[row : row + 1],
            mask[row : row + 1],
            0.125,
        )
        assert alone is not None and torch.equal(alone[0], together[row]), row
    # other company: rows from another draw around the same row, at another batch size
    others = _case(9, heads, kv_heads, dim, seed=1, dtype=dtype)
    mixed = [
        torch.cat([o[:2], t[4:5], o[3:6]])
        for o, t in zip(others, (query, key, value, mask), strict=True)
    ]
    out = kernels.decode_attention(*mixed, 0.125)  # type: ignore[call-arg]
    assert out is not None and torch.equal(out[2], together[4])
    # and with one thread instead of the default
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = kernels.decode_attention(query, key, value, mask, 0.125)
    finally:
        torch.set_num_threads(threads)
    assert single is not None and torch.equal(single, together)


@pytest.mark.parametrize("dtype", DTYPES)
def test_columns_outside_the_mask_are_never_read(dtype: torch.dtype) -> None:
    query, key, value, mask = _case(4, 9, 3, 64, dtype=dtype)
    before = kernels.decode_attention(query, key, value, mask, 0.125)
    hidden = ~mask[:, 0, 0, :]
    key[hidden.nonzero(as_tuple=True)[0], :, hidden.nonzero(as_tuple=True)[1]] = float("inf")
    value[hidden.nonzero(as_tuple=True)[0], :, hidden.nonzero(as_tuple=True)[1]] = float("nan")
    after = kernels.decode_attention(query, key, value, mask, 0.125)
    assert before is not None and after is not None
    assert torch.isfinite(after).all() and torch.equal(after, before)


def test_shapes_it_does_not_handle_fall_back_to_pytorch() -> None:
    query, key, value, mask = _case(2, 9, 3, 64)
    assert kernels.decode_attention(query, key.float(), value, mask, 0.125) is None  # mixed
    assert kernels.decode_attention(query, key.half(), value.half(), mask, 0.125) is None
    assert kernels.decode_attention(query, key, value, mask.float(), 0.125) is None
    odd = _case(2, 4, 2, 40)  # a head dimension that is not a multiple of 16
    assert kernels.decode_attention(*odd, 0.125) is None  # type: ignore[call-arg]
    out, _ = engine_attention(torch.nn.Module(), odd[0], odd[1], odd[2], odd[3], 0.125)
    reference = _decode_attention(odd[0].float(), odd[1].float(), odd[2].float(), odd[3], 0.125)
    assert torch.equal(out, reference.to(torch.bfloat16))


def _prompt(  # type: ignore[no-untyped-def]
    q_len: int,
    cached: int,
    padding: int,
    heads: int = 9,
    kv_heads: int = 3,
    dim: int = 64,
    dtype: torch.dtype = torch.bfloat16,
):
    """One row's prefill: ``q_len`` queries after ``cached`` keys (a prefix, then ``padding``
    masked columns), as views of a slot cache of 700 columns (heads strided by the capacity)."""
    generator = torch.Generator().manual_seed(q_len + cached)
    k_len = cached + q_len
    query = torch.randn(1, heads, q_len, dim, generator=generator).to(dtype)
    keys = torch.randn(1, kv_heads, 700, dim, generator=generator).to(dtype)
    values = torch.randn(1, kv_heads, 700, dim, generator=generator).to(dtype)
    columns, rows = torch.arange(k_len), torch.arange(cached, k_len)
    mask = columns[None, :] <= rows[:, None]
    mask[:, cached - padding : cached] = False
    return query, keys[:, :, :k_len], values[:, :, :k_len], mask[None, None]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("q_len", "cached", "padding"), [(436, 76, 14), (42, 500, 100), (9, 0, 0)])
def test_prefill_kernel_matches_pytorch_attention_to_fp32_rounding(
    q_len: int, cached: int, padding: int, dtype: torch.dtype
) -> None:
    query, key, value, mask = _prompt(q_len, cached, padding, dtype=dtype)
    assert not key.is_contiguous()  # a view of the slot cache, as in the engine
    for m in (mask, None if padding == 0 else mask):
        out = kernels.prefill_attention(query, key, value, m, 0.125)
        assert out is not None and out.shape == (1, q_len, 9, 64)
        exact = _prefill_attention(query.double(), key.double(), value.double(), m, 0.125)
        torch_fp32 = _prefill_attention(query.float(), key.float(), value.float(), m, 0.125)
        kernel_error = (out.double() - exact).abs().max().item()
        torch_error = (torch_fp32.double() - exact).abs().max().item()
        assert kernel_error < 2e-6 and kernel_error < 4 * torch_error + 1e-7


@pytest.mark.parametrize("dtype", DTYPES)
def test_prefill_query_bits_do_not_depend_on_the_other_queries(dtype: torch.dtype) -> None:
    """A prompt's first 20 queries alone give the bits they have in the whole prompt (their
    tiles attend fewer columns), and what masked columns hold does not count (any finite
    values: they add exact zeros; the engine zeroes a slot before reusing it)."""
    query, key, value, mask = _prompt(300, 60, 10, dtype=dtype)
    whole = kernels.prefill_attention(query, key, value, mask, 0.125)
    first = kernels.prefill_attention(query[:, :, :20], key, value, mask[:, :, :20], 0.125)
    assert whole is not None and first is not None
    assert torch.equal(first[0], whole[0, :20])
    poisoned_k, poisoned_v = key.clone(), value.clone()
    poisoned_k[:, :, 50:60], poisoned_v[:, :, 50:60] = 1e4, -3e38  # the padding columns
    again = kernels.prefill_attention(query, poisoned_k, poisoned_v, mask, 0.125)
    assert again is not None and torch.equal(again, whole)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "march",
    [
        "x86-64-v2",  # no AVX2: the portable C loops (what other CPUs run)
        "x86-64-v3",  # AVX2 + FMA: the AVX2 code (on an AVX-512 CPU, the native build's other)
    ],
)
def test_other_builds_give_the_native_builds_bits(tmp_path, monkeypatch, march, dtype) -> None:  # type: ignore[no-untyped-def]
    """The portable C loops, the AVX2 code and the AVX-512 code compute the same sums in the
    same order: the same bits, whichever this CPU's native build runs."""
    import subprocess

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    cc = kernels.compiler()
    assert cc is not None
    flags = (*tuple(f for f in kernels.FLAGS if f != "-march=native"), f"-march={march}")
    try:
        other = kernels.open_library(kernels.build(cc, flags))
    except subprocess.CalledProcessError as exc:
        pytest.fail(exc.stderr)
    query, key, value, mask = _case(6, 9, 3, 64, dtype=dtype)
    ours = kernels.decode_attention(query, key, value, mask, 0.125)
    theirs = kernels.decode_attention(query, key, value, mask, 0.125, library=other)
    assert ours is not None and theirs is not None and torch.equal(ours, theirs)
    # 100 queries: full tiles and a short one; 48 dimensions: a pass of 32 and one of 16
    for heads, kv_heads, dim in ((9, 3, 64), (4, 2, 48)):
        query, key, value, mask = _prompt(100, 40, 8, heads, kv_heads, dim, dtype=dtype)
        ours = kernels.prefill_attention(query, key, value, mask, 0.125)
        theirs = kernels.prefill_attention(query, key, value, mask, 0.125, library=other)
        assert ours is not None and theirs is not None and torch.equal(ours, theirs)


# the prefill modes in bf16 products, each where this CPU runs it
PAIR_MODES = {"amx": kernels.PREFILL_AMX, "avx512-bf16": kernels.PREFILL_DPBF16}
RUNS = {
    kernels.PREFILL_AMX: kernels.amx_available,
    kernels.PREFILL_DPBF16: kernels.dpbf16_available,
}


@pytest.fixture(params=list(PAIR_MODES))
def pair_mode(request: pytest.FixtureRequest) -> int:
    mode = PAIR_MODES[request.param]
    if not RUNS[mode]():
        pytest.skip(f"no {request.param} on this CPU")
    return mode


@pytest.mark.parametrize("dim", [64, 128])
@pytest.mark.parametrize(("q_len", "cached", "padding"), [(436, 76, 14), (42, 500, 100), (9, 0, 0)])
def test_prefill_in_bf16_products_is_close_to_the_loops(
    pair_mode: int, q_len: int, cached: int, padding: int, dim: int
) -> None:
    """Each probability is two bf16 parts (~16 bits): the outputs are within a few times the
    fp32 loops' error of exact attention (bf16 probabilities would be ~1e-3 off), and not the
    loops' bits."""
    query, key, value, mask = _prompt(q_len, cached, padding, 8, 2, dim)
    for m in (mask, None if padding == 0 else mask):
        out = kernels.prefill_attention(query, key, value, m, 0.125, mode=pair_mode)
        loops = kernels.prefill_attention(query, key, value, m, 0.125)
        assert out is not None and loops is not None and out.shape == (1, q_len, 8, dim)
        exact = _prefill_attention(query.double(), key.double(), value.double(), m, 0.125)
        error = (out.double() - exact).abs().max().item()
        loops_error = (loops.double() - exact).abs().max().item()
        assert error < 2e-5 and error < 20 * loops_error, (error, loops_error)
        assert not torch.equal(out, loops)


def test_prefill_in_bf16_products_keeps_a_querys_bits_whatever_its_company(
    pair_mode: int,
) -> None:
    """As on the loops: a prompt's first 20 queries alone (a short last tile, another span)
    give their bits in the whole prompt, with one thread too, and masked columns holding
    anything finite add exact zeros."""
    query, key, value, mask = _prompt(300, 60, 10)
    whole = kernels.prefill_attention(query, key, value, mask, 0.125, mode=pair_mode)
    first = kernels.prefill_attention(
        query[:, :, :20], key, value, mask[:, :, :20], 0.125, mode=pair_mode
    )
    assert whole is not None and first is not None
    assert torch.equal(first[0], whole[0, :20])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = kernels.prefill_attention(query, key, value, mask, 0.125, mode=pair_mode)
    finally:
        torch.set_num_threads(threads)
    assert single is not None and torch.equal(single, whole)
    poisoned_k, poisoned_v = key.clone(), value.clone()
    poisoned_k[:, :, 50:60], poisoned_v[:, :, 50:60] = 1e4, -3e38  # the padding columns
    again = kernels.prefill_attention(query, poisoned_k, poisoned_v, mask, 0.125, mode=pair_mode)
    assert again is not None and torch.equal(again, whole)


def test_the_profiles_choice_reaches_every_attention_module() -> None:
    """use_engine_attention records the prefill mode cpu.amx_attention and
    cpu.bf16_attention give on this CPU on each attention block (what the attention function
    and the lean step read), and the loops with the kernels off."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from serving.engine.cpu.attention import prefill_mode, use_engine_attention

    config = LlamaConfig(
        vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2,
    )  # fmt: skip
    model = LlamaForCausalLM(config)
    blocks = [layer.self_attn for layer in model.model.layers]
    amx, dpbf16 = kernels.amx_available(), kernels.dpbf16_available()
    either = kernels.PREFILL_AMX if amx else (kernels.PREFILL_DPBF16 if dpbf16 else 0)
    cases = (
        (True, True, True, either),
        (True, True, False, kernels.PREFILL_AMX if amx else kernels.PREFILL_LOOPS),
        (True, False, True, kernels.PREFILL_DPBF16 if dpbf16 else kernels.PREFILL_LOOPS),
        (True, False, False, kernels.PREFILL_LOOPS),
        (False, True, True, kernels.PREFILL_LOOPS),
    )
    for use_kernels, amx_asked, dpbf16_asked, expected in cases:
        use_engine_attention(model, use_kernels=use_kernels, amx=amx_asked, dpbf16=dpbf16_asked)
        assert [prefill_mode(block) for block in blocks] == [expected] * len(blocks)
    assert prefill_mode(model.model) == kernels.PREFILL_LOOPS  # only attention blocks carry it


@pytest.mark.parametrize("mode", list(PAIR_MODES.values()))
def test_a_pair_mode_is_taken_only_where_it_applies(mode: int) -> None:
    """An fp32 cache, a head dimension that is not a multiple of 64, or a CPU without the
    instructions: the mode changes nothing (the loops' bits)."""
    cases = [_prompt(50, 30, 5, dtype=torch.float32), _prompt(50, 30, 5, 4, 2, 48)]
    if not RUNS[mode]():
        cases.append(_prompt(50, 30, 5))
    for query, key, value, mask in cases:
        asked = kernels.prefill_attention(query, key, value, mask, 0.125, mode=mode)
        loops = kernels.prefill_attention(query, key, value, mask, 0.125)
        assert asked is not None and loops is not None and torch.equal(asked, loops)


def test_engine_attention_sends_the_models_own_cache_to_the_kernel() -> None:
    query, key, value, mask = _case(3, 9, 3, 64)
    out, _ = engine_attention(torch.nn.Module(), query, key, value, mask, 0.125)
    direct = kernels.decode_attention(query, key, value, mask, 0.125)
    assert direct is not None
    assert out.dtype == torch.bfloat16 and torch.equal(out, direct.to(torch.bfloat16))
    # a bf16 model's fp32 cache (the generic decode loop's) keeps PyTorch's path
    out32, _ = engine_attention(torch.nn.Module(), query, key.float(), value.float(), mask, 0.125)
    reference = _decode_attention(query.float(), key.float(), value.float(), mask, 0.125)
    assert torch.equal(out32, reference.to(torch.bfloat16))
    # an fp32 model's fp32 cache goes to the kernel, and pytorch_attention never does
    q32 = query.float()
    out32, _ = engine_attention(torch.nn.Module(), q32, key.float(), value.float(), mask, 0.125)
    direct32 = kernels.decode_attention(q32, key.float(), value.float(), mask, 0.125)
    assert direct32 is not None and torch.equal(out32, direct32)
    off, _ = pytorch_attention(torch.nn.Module(), q32, key.float(), value.float(), mask, 0.125)
    assert torch.equal(off, reference) and not torch.equal(off, direct32)
    # and a row's prefill on the bf16 slot cache
    query, key, value, mask = _prompt(50, 30, 5)
    out, _ = engine_attention(torch.nn.Module(), query, key, value, mask, 0.125)
    direct = kernels.prefill_attention(query, key, value, mask, 0.125)
    assert direct is not None and torch.equal(out, direct.to(torch.bfloat16))
    # an attention module with a mode (use_engine_attention's record of cpu.amx_attention
    # and cpu.bf16_attention) gets its prefill that way where it runs
    for mode in PAIR_MODES.values():
        module = torch.nn.Module()
        set_prefill_mode(module, mode)
        out, _ = engine_attention(module, query, key, value, mask, 0.125)
        paired = kernels.prefill_attention(query, key, value, mask, 0.125, mode=mode)
        assert paired is not None and torch.equal(out, paired.to(torch.bfloat16))
