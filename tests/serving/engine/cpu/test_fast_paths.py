"""The engine's CPU fast paths are exact where they say so: packed bf16 weights give
``F.linear``'s bits (packed fp32 weights, oneDNN's instead of MKL's, give each row bits that
do not depend on its company), one argmax per decode step gives each row's own choice, and
prefill attention on grouped heads gives transformers' SDPA bits
(serving/engine/cpu/packed_linear.py, serving/engine/cpu/slot_decoding.py,
serving/engine/cpu/attention.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from serving.engine.cpu import lean_step, packed_linear
from serving.engine.cpu.attention import _prefill_attention
from serving.engine.cpu.packed_linear import PackedLinear, pack_linears
from serving.engine.cpu.slot_decoding import RowRequest, choose_token
from serving.model.profiles import cpu_has_native_bf16

needs_onednn = pytest.mark.skipif(not packed_linear.available(), reason="no oneDNN in torch")
needs_onednn_bf16 = pytest.mark.skipif(
    not packed_linear.available(torch.bfloat16), reason="oneDNN has no bf16 on this CPU"
)

# SmolLM2-135M's projections: q/o, k/v, gate/up, down, and the output layer
SHAPES = [(576, 576), (192, 576), (1536, 576), (576, 1536), (49152, 576)]


@pytest.mark.unit
@needs_onednn_bf16
@pytest.mark.skipif(
    not cpu_has_native_bf16(),
    # on an AVX-512 Xeon without BF16 (2026-12-01) the bits differed at 2 rows for three shapes;
    # the engine runs fp32 there (dtype auto)
    reason="oneDNN emulates bf16 on this CPU, F.linear's and the packed matmul's differently",
)
@pytest.mark.parametrize(("out_features", "in_features"), SHAPES)
def test_packed_linear_gives_f_linear_bits_at_every_row_count(
    out_features: int, in_features: int
) -> None:
    torch.manual_seed(out_features + in_features)
    layer = nn.Linear(in_features, out_features, bias=False).to(torch.bfloat16)
    weight = layer.weight.detach().clone()
    assert pack_linears(layer) == 1 and isinstance(layer, PackedLinear)
    with torch.inference_mode():
        for rows in (1, 2, 3, 8, 16):
            x = torch.randn(rows, 1, in_features).to(torch.bfloat16)
            assert torch.equal(layer(x), F.linear(x, weight)), rows
        prompt = torch.randn(1, 130, in_features).to(torch.bfloat16)  # a prefill's shape
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            out = layer(prompt)
        assert torch.equal(out, F.linear(prompt, weight))
    # the packed kernel ran (not F.linear's fallback, which gives these bits trivially)
    ops = {event.name for event in prof.events()}
    assert "mkldnn::_linear_pointwise" in ops and "aten::linear" not in ops, ops


@pytest.mark.unit
@needs_onednn
@pytest.mark.parametrize(("out_features", "in_features"), SHAPES)
def test_packed_fp32_rows_do_not_depend_on_their_company(
    out_features: int, in_features: int
) -> None:
    """fp32: oneDNN's kernel, not ``F.linear``'s (MKL), so not its bits; but a row's bits are
    the same in any company of 2 to 16 rows and at any place in it, and in any block of a
    prompt's rows (what batch invariance needs of a decode step's matmuls). Not alone: a
    single row can take oneDNN's one-row path (on an AMX Xeon, 2026-12-01, the down
    projection's bits moved at one row), which is why a lone row steps beside an idle one
    (serving/engine/cpu/slot_decoding.py), as with bf16."""
    torch.manual_seed(out_features + in_features)
    layer = nn.Linear(in_features, out_features, bias=False)
    weight = layer.weight.detach().clone()
    assert pack_linears(layer) == 1 and isinstance(layer, PackedLinear)
    with torch.inference_mode():
        x = torch.randn(16, in_features)
        together = layer(x)
        for rows in (2, 3, 8, 15):
            for start in (0, 16 - rows):
                fewer = layer(x[start : start + rows].clone())
                assert torch.equal(fewer, together[start : start + rows]), (rows, start)
        prompt = torch.randn(130, in_features)
        whole = layer(prompt)
        assert torch.equal(layer(prompt[:40].clone()), whole[:40])
        assert torch.allclose(whole, F.linear(prompt, weight), rtol=1e-4, atol=1e-4)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            layer(x)
    ops = {event.name for event in prof.events()}
    assert "mkldnn::_linear_pointwise" in ops and "aten::linear" not in ops, ops


@pytest.mark.unit
@needs_onednn
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("out_features", "in_features"), SHAPES[:4])
def test_rating_passes_rated_together_keep_each_rows_bits_where_the_probe_says_so(
    dtype: torch.dtype, out_features: int, in_features: int
) -> None:
    """The rating passes of rows that end at one step share each matmul
    (serving.engine.cpu.lean_step.rows_logits) only where a pass's rows (~42 positions) get the bits
    they get alone in a block of any number of passes, at any place in it: what
    ``lean_step.keeps_row_bits`` probes at load must be what these blocks show (true for
    oneDNN's fp32 and AVX-512 bf16 matmuls; on AMX tiles some shapes move)."""
    if dtype == torch.bfloat16 and not packed_linear.available(torch.bfloat16):
        pytest.skip("no oneDNN bf16 matmul on this CPU")
    torch.manual_seed(out_features * 3 + in_features)
    layer = nn.Linear(in_features, out_features, bias=False).to(dtype)
    pack_linears(layer)
    length = 42
    with torch.inference_mode():
        x = torch.randn(16 * length, in_features).to(dtype)
        together = layer(x)
        keeps = all(
            torch.equal(
                layer(x[first * length : (first + count) * length].clone()),
                together[first * length : (first + count) * length],
            )
            for count in (1, 2, 3, 5, 8, 16)
            for first in {0, 16 - count}
        )
    assert lean_step.keeps_row_bits(layer, in_features, dtype, length) == keeps
    if dtype == torch.float32:
        assert keeps  # what the rating passes of an fp32 model share on any CPU here


@pytest.mark.unit
@needs_onednn_bf16
def test_pack_linears_follows_changed_weights_and_leaves_the_rest_plain() -> None:
    model = nn.ModuleDict(
        {
            "proj": nn.Linear(64, 32, bias=True).to(torch.bfloat16),
            "lora_A": nn.Linear(64, 4, bias=False).to(torch.bfloat16),  # PEFT's own layer
            "fp32": nn.Linear(64, 32),
            "fp16": nn.Linear(64, 32).half(),  # no packed path for it
        }
    )
    assert pack_linears(model) == 2
    assert type(model["lora_A"]) is nn.Linear and type(model["fp16"]) is nn.Linear
    assert isinstance(model["fp32"], PackedLinear)
    proj = model["proj"]
    x = torch.randn(4, 64).to(torch.bfloat16)
    with torch.no_grad():
        proj.weight.data.add_(1.0)  # an adapter merged into the weights, as PEFT does
    pack_linears(model)  # what loading.finish does after every adapter change
    with torch.inference_mode():
        assert torch.equal(proj(x), F.linear(x, proj.weight, proj.bias))
    # with grad (training), a plain Linear: the gradient reaches the weight
    x.requires_grad_(True)
    proj(x).float().sum().backward()
    assert proj.weight.grad is not None


class _Block(nn.Module):
    """A LLaMA-style block's projections (the names :data:`packed_linear.SIBLINGS` groups)."""

    def __init__(self) -> None:
        super().__init__()
        for name, out in (("q_proj", 96), ("k_proj", 32), ("v_proj", 32), ("o_proj", 64)):
            setattr(self, name, nn.Linear(64, out, bias=False))
        self.gate_proj, self.up_proj = (
            nn.Linear(64, 128, bias=False),
            nn.Linear(64, 128, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        mixed = self.o_proj(q[..., :64] + torch.cat([k, v], -1))
        return mixed + (F.silu(self.gate_proj(x)) * self.up_proj(x))[..., :64]


def _pack_alone(model: nn.Module) -> None:
    """Every Linear packed (again) on its own, in no sibling group: fp32's reference bits."""
    for name, module in model.named_modules():
        if type(module) in (nn.Linear, PackedLinear) and "lora_" not in name:
            module.__class__ = PackedLinear
            module.pack()  # type: ignore[attr-defined]


@pytest.mark.unit
@needs_onednn
@pytest.mark.parametrize(
    "dtype", [pytest.param(torch.bfloat16, marks=needs_onednn_bf16), torch.float32]
)
@pytest.mark.parametrize("lora", [False, True])
def test_sibling_projections_run_as_one_matmul_with_the_same_bits(
    lora: bool, dtype: torch.dtype
) -> None:
    """q/k/v and gate/up packed as one matrix each: every member's output is the bits of its
    own matmul (bf16: ``F.linear``'s; fp32: its own packed matrix's), in any call order, with
    PEFT's LoRA layers wrapping the members, and after the weights change."""
    import copy

    torch.manual_seed(3)
    block: nn.Module = _Block().to(dtype)
    if lora:
        from peft import LoraConfig, inject_adapter_in_model

        config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"])
        block = inject_adapter_in_model(config, block)
        for name, param in block.named_parameters():
            if "lora_B" in name:  # PEFT starts B at zero: make the adapter do something
                nn.init.normal_(param, std=0.5)
        block = block.to(dtype)
    plain = copy.deepcopy(block)
    pack_linears(block)
    if dtype == torch.float32:
        _pack_alone(plain)
    members = [getattr(block, n) for n in ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")]
    members = [getattr(m, "base_layer", m) for m in members]
    assert all(isinstance(m, PackedLinear) and m._siblings is not None for m in members)
    assert block.o_proj._siblings is None and block.o_proj._packed is not None
    with torch.inference_mode():
        for rows in (1, 2, 8, 130):
            x = torch.randn(rows, 64).to(dtype)
            assert torch.equal(block(x), plain(x)), rows
            # out of order, and one member twice on the same input
            for name in ("v_proj", "q_proj", "v_proj", "k_proj"):
                assert torch.equal(getattr(block, name)(x), getattr(plain, name)(x)), name
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            block(torch.randn(8, 64).to(dtype))
    matmuls = [e for e in prof.events() if e.name == "mkldnn::_linear_pointwise"]
    assert len(matmuls) == 3  # q/k/v, o, gate/up
    with torch.no_grad():  # an adapter merged into the weights
        for module in (block, plain):
            target = getattr(module.k_proj, "base_layer", module.k_proj)
            target.weight.add_(0.5)
    pack_linears(block)
    if dtype == torch.float32:
        _pack_alone(plain)
    with torch.inference_mode():
        x = torch.randn(4, 64).to(dtype)
        assert torch.equal(block(x), plain(x))


@pytest.mark.unit
def test_one_argmax_per_step_chooses_each_rows_own_token() -> None:
    """``choose_token`` with the step's argmax equals the argmax of the row's changed logits,
    over bf16 logits full of ties, repetition penalties, suppressed first tokens and eos
    forbidden before ``min_new_tokens``."""
    generator = torch.Generator().manual_seed(7)
    eos = 3
    shortcuts = 0
    for case in range(400):
        # few distinct values: ties between eos, seen tokens and the rest are common
        logits = (torch.randint(-4, 5, (50,), generator=generator) / 2).to(torch.bfloat16)
        generated = case % 4
        seen = {int(t) for t in torch.randint(0, 50, (generated,), generator=generator)}
        request = RowRequest(
            prompt_ids=[1],
            max_new_tokens=10,
            suppress_first=(0, 1, 2) if case % 3 == 0 else (),
            min_new_tokens=2 if case % 5 else 0,
            repetition_penalty=1.3 if case % 2 else 1.0,
        )
        argmax = int(logits.float().argmax())
        fast = choose_token(logits, request, generated, seen, eos, argmax)
        slow = choose_token(logits, request, generated, seen, eos)
        assert fast == slow, case
        shortcuts += fast == argmax
    assert 50 < shortcuts < 400  # both paths taken


@pytest.mark.unit
@pytest.mark.parametrize("cached", [0, 60])
def test_prefill_attention_gives_transformers_sdpa_bits(cached: int) -> None:
    """A 300-token prompt after ``cached`` keys (a prefix and padding between, masked), and
    with no mask at all: bit for bit what transformers' SDPA path computes. With no mask after
    cached keys (a path transformers does not take): the causal mask from the last key back."""
    from types import SimpleNamespace

    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    torch.manual_seed(1)
    q_len = 300
    kv_len = cached + q_len
    query = torch.randn(1, 9, q_len, 64)
    key, value = torch.randn(1, 3, kv_len, 64), torch.randn(1, 3, kv_len, 64)
    module = SimpleNamespace(num_key_value_groups=3, is_causal=True)
    masks: list[torch.Tensor | None] = [None] if cached == 0 else []
    columns, rows = torch.arange(kv_len), torch.arange(cached, kv_len)
    causal = columns[None, :] <= rows[:, None]
    if cached:
        causal[:, 40:cached] = False  # the padding between the prefix and the prompt
    masks.append(causal[None, None])
    for mask in masks:
        ours = _prefill_attention(query, key, value, mask, 0.125)
        theirs, _ = sdpa_attention_forward(module, query, key, value, mask, scaling=0.125)
        assert ours.shape == (1, q_len, 9, 64)
        assert torch.equal(ours, theirs)
    if cached:  # no mask after cached keys: causal from the last key back, not SDPA's top-left
        plain = (columns[None, :] <= rows[:, None])[None, None]
        assert torch.equal(
            _prefill_attention(query, key, value, None, 0.125),
            _prefill_attention(query, key, value, plain, 0.125),
        )


@pytest.mark.local
@needs_onednn
def test_packed_weights_leave_every_result_bit_for_bit(engine, engine_settings) -> None:  # type: ignore[no-untyped-def]
    """The default engine (packed) and the same profile unpacked: the same Results, rating
    and importance included, bit for bit. (On a CPU with AMX or AVX512-BF16 the default's
    decode steps run the engine's own bf16 matmul, other bits by design: packing is compared
    without it.)"""
    from serving.engine import SummarizeEngine
    from tests.support.engine_articles import GRADED

    if engine.profile.dtype != "bfloat16":
        pytest.skip("packing applies to bf16 weights (this CPU has no native bf16)")
    profile = engine.profile

    def variant(**changes: bool) -> SummarizeEngine:
        cpu = profile.cpu.model_copy(update=changes)
        return SummarizeEngine.load(profile.model_copy(update={"cpu": cpu}), engine_settings)

    if packed_linear.steps_run_bf16_kernel(engine.decoder.model):
        engine = variant(amx_matmul=False, bf16_matmul=False)
    unpacked = variant(packed_weights=False)
    model = unpacked.decoder.model
    assert not any(isinstance(m, PackedLinear) for m in model.modules())
    assert any(isinstance(m, PackedLinear) for m in engine.decoder.model.modules())
    articles = GRADED[:3]
    ours = engine.summarize(articles)
    theirs = unpacked.summarize(articles)
    assert [r.model_dump(exclude={"timings"}) for r in ours] == [
        r.model_dump(exclude={"timings"}) for r in theirs
    ]
