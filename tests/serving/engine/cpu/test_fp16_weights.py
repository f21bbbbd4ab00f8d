"""fp32 decode steps on weights held in fp16 (serving/engine/cpu/kernels/fp16_weights.c, profile
option
``cpu.fp16_weights``): the kernel's products, a row's bits whatever rows are beside it, every
build's bits the same, and the packed Linears running it in decode steps only. The engine-level
checks (every decode step of a run against the model's own forward, an article's tokens and
rating alone or in company) are in tests/serving/engine/test_continuous_batching.py, on whichever
dtype this machine's engine runs; the tiny model below runs the fp32 path on any machine."""

from __future__ import annotations

import subprocess

import pytest
import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from serving.engine.cpu import kernels, packed_linear
from serving.engine.cpu.kernels import fp16_weights
from tests.support.packed import assert_calls_agree_and_unpack
from tests.support.slot import assert_alone_as_together

pytestmark = [
    pytest.mark.unit,
    pytest.mark.skipif(
        not kernels.available() or not packed_linear.available(), reason="no C compiler here"
    ),
]


@pytest.fixture(scope="module")
def kernel() -> fp16_weights.Fp16Weights:
    found = fp16_weights.load()
    assert found is not None
    return found


def _random(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(("n", "k"), [(960, 576), (576, 1536), (70, 33), (49152 // 64, 576)])
def test_the_product_is_x_times_the_fp16_weights(kernel, n, k) -> None:  # type: ignore[no-untyped-def]
    weight, x, bias = _random((n, k), 0), _random((5, k), 1), _random((n,), 2)
    panels = kernel.pack(weight)
    rounded = weight.to(torch.float16).double()
    want = x.double() @ rounded.T
    got = kernel.matmul(x, panels).double()
    assert torch.allclose(got, want, rtol=1e-5, atol=2e-6 * k)
    with_bias = kernel.matmul(x, panels, bias)
    # the bias is added to the finished sum: the same product, then one fp32 add
    assert torch.equal(with_bias, kernel.matmul(x, panels) + bias)


def test_a_rows_bits_do_not_depend_on_the_rows_beside_it(kernel) -> None:  # type: ignore[no-untyped-def]
    """Batch invariance by construction: any row count (chunks of 8 and their remainders),
    any position among them, any thread count."""
    weight, x = _random((200, 576), 3), _random((19, 576), 4)
    panels = kernel.pack(weight)
    whole = kernel.matmul(x, panels)
    for rows in (1, 2, 3, 7, 8, 9, 16, 17):
        assert torch.equal(kernel.matmul(x[:rows], panels), whole[:rows]), rows
    for start in (1, 5, 11):
        assert torch.equal(kernel.matmul(x[start:], panels), whole[start:]), start
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert torch.equal(kernel.matmul(x, panels), whole)
    finally:
        torch.set_num_threads(threads)
    # strided rows (a view's) give the same bits as contiguous ones
    wide = torch.cat([x, _random((19, 100), 5)], dim=1)
    assert torch.equal(kernel.matmul(wide[:, :576], panels), whole)


def _every_half(kernel):  # type: ignore[no-untyped-def]
    """Each finite fp16 value as the kernel widens it: one-hot rows pick the weights out."""
    bits = torch.arange(0, 1 << 16, dtype=torch.int32).to(torch.int16).view(torch.float16)
    values = bits[torch.isfinite(bits)].float()  # 63488 values: subnormals, zeros, extremes
    weight = values.reshape(-1, 32)
    return weight, kernel.matmul(torch.eye(32), kernel.pack(weight)).T


def test_every_fp16_value_is_widened_exactly(kernel) -> None:  # type: ignore[no-untyped-def]
    weight, widened = _every_half(kernel)
    assert torch.equal(widened, weight)


@pytest.mark.parametrize(
    "march",
    [
        "x86-64-v2",  # no AVX2: the portable loops (fmaf)
        "x86-64-v3",  # AVX2 + FMA + F16C
    ],
)
def test_other_builds_give_the_native_builds_bits(kernel, tmp_path, monkeypatch, march) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    cc = kernels.compiler()
    assert cc is not None
    flags = (*(f for f in fp16_weights.FLAGS if f != "-march=native"), f"-march={march}")
    try:
        other = fp16_weights.load_from(kernels.build(cc, flags, fp16_weights.SOURCE))
    except subprocess.CalledProcessError as exc:
        pytest.fail(exc.stderr)
    assert other is not None
    weight, x, bias = _random((100, 300), 6), _random((11, 300), 7), _random((100,), 8)
    panels = kernel.pack(weight)
    assert torch.equal(other.pack(weight).data, panels.data)
    for rows in (1, 2, 11):  # AVX2: whole panels up to 2 rows, half-panels from 3
        assert torch.equal(
            other.matmul(x[:rows], panels, bias), kernel.matmul(x[:rows], panels, bias)
        )
    weight, widened = _every_half(other)  # the portable build widens in C, not by F16C
    assert torch.equal(widened, weight)


def _blocks(fp32: bool = True) -> nn.Module:
    """A block's q/k/v and a separate output Linear, as pack_linears finds them."""
    torch.manual_seed(9)
    block = nn.Module()
    block.q_proj, block.k_proj, block.v_proj = (
        nn.Linear(64, 64),
        nn.Linear(64, 32),
        nn.Linear(64, 32),
    )
    block.o_proj = nn.Linear(64, 64, bias=False)
    return block if fp32 else block.to(torch.bfloat16)


@torch.inference_mode()
def test_packed_linears_read_the_panels_in_decode_steps_only(kernel) -> None:  # type: ignore[no-untyped-def]
    block = _blocks()
    assert packed_linear.round_to_fp16(block) == 4
    plain = {name: (m.weight.clone(), m.bias) for name, m in block.named_children()}
    assert packed_linear.pack_linears(block, fp16_panels=True) == 4
    assert packed_linear.steps_read_panels(block)  # a lone row may step alone
    x = _random((6, 64), 10)
    for name, (weight, bias) in plain.items():
        module = getattr(block, name)
        own = kernel.matmul(x, kernel.pack(weight), bias)
        with packed_linear.decode_rows():
            in_step = module(x)
        # a sibling's columns of the group's panels are its own panels' bits
        assert torch.equal(in_step, own), name
        outside = module(x)  # oneDNN's fp32 matmul on the same (rounded) values
        assert torch.allclose(outside, own, atol=1e-5)
    assert_calls_agree_and_unpack(block, x)
    half = _blocks(fp32=False)  # packed where this CPU has bf16 matmuls, else left plain
    packed_linear.pack_linears(half, fp16_panels=True)
    assert not packed_linear.steps_read_panels(half)
    assert all(getattr(m, "_panels", None) is None for m in half.modules())


def test_rounding_gives_fp16_values_once_and_spares_lora_layers() -> None:
    model = nn.Module()
    model.proj = nn.Linear(32, 16)
    model.lora_A = nn.ModuleDict({"default": nn.Linear(32, 4, bias=False)})
    lora_before = model.lora_A["default"].weight.clone()
    bias_before = model.proj.bias.clone()
    assert packed_linear.round_to_fp16(model) == 1
    weight = model.proj.weight.clone()
    assert torch.equal(weight, weight.to(torch.float16).float())
    assert packed_linear.round_to_fp16(model) == 1 and torch.equal(model.proj.weight, weight)
    assert torch.equal(model.lora_A["default"].weight, lora_before)
    assert torch.equal(model.proj.bias, bias_before)  # biases are added, not read per row
    packed_linear.pack_linears(model, fp16_panels=True)
    assert model.proj._panels is not None
    assert not packed_linear.steps_read_panels(model)  # LoRA's own Linears run F.linear
    # a weight beyond fp16's range stays as it is, and gets no panels
    with torch.no_grad():
        model.proj.weight[0, 0] = 1e6
    assert packed_linear.round_to_fp16(model) == 0
    packed_linear.pack_linears(model, fp16_panels=True)
    assert model.proj._panels is None and model.proj._packed is not None


def _tiny_llama() -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=96,
        # oneDNN's fp32 sums are the kernel's own chains up to 256 inputs: wider, or a
        # step that ran one or the other by row count would not show here
        hidden_size=576,
        intermediate_size=640,
        num_hidden_layers=2,
        num_attention_heads=9,
        num_key_value_heads=3,
        max_position_embeddings=128,
        tie_word_embeddings=True,
    )
    torch.manual_seed(11)
    return LlamaForCausalLM(config).eval()


@torch.inference_mode()
@pytest.mark.parametrize("step_kernels", [True, False])  # the two ways to the rating passes
def test_a_tiny_fp32_model_decodes_a_row_the_same_in_any_company(step_kernels: bool) -> None:
    """The fp32 path end to end on a random LLaMA: weights rounded (the tied embedding with the
    output layer), panels packed, and a row's decode-step logits the same alone (beside the
    idle row) as among five; rated together (compiled step) or one row at a time."""
    from serving.engine.cpu.attention import use_engine_attention
    from serving.engine.cpu.slot_decoding import SlotBatch

    model = _tiny_llama()
    use_engine_attention(model, use_kernels=True)
    packed_linear.round_to_fp16(model)
    packed_linear.pack_linears(model, fp16_panels=True)
    embed = model.model.embed_tokens.weight
    assert torch.equal(embed, embed.to(torch.float16).float())
    assert model.lm_head._panels is not None

    assert SlotBatch(model, slots=2, width=12, max_new_tokens=4, pad_id=0, eos_id=95).lone_row_alone
    assert_alone_as_together(model, step_kernels)
