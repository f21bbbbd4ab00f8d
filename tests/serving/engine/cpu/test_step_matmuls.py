"""A bf16 model's decode-step matmuls in the engine's own kernels: on AMX tiles
(serving/engine/cpu/kernels/amx_matmul.c, profile option ``cpu.amx_matmul``) and in AVX512-BF16 dot
products (serving/engine/cpu/kernels/bf16_matmul.c, ``cpu.bf16_matmul``), each test run for both:
the kernel's products, a row's bits whatever the row count and threads, the packed Linears running
it in decode steps (or for every row, where it serves prompts too), and a tiny bf16 LLaMA
decoding a row the same alone (no idle neighbour) as among five. Skipped where the CPU lacks the
kernel's instructions (where its option changes nothing: the last test checks that on any CPU)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from serving.engine.cpu import kernels, packed_linear
from serving.engine.cpu.kernels import amx_matmul, bf16_matmul
from tests.support.packed import assert_calls_agree_and_unpack
from tests.support.slot import assert_alone_as_together

# each kernel: its loader and the pack_linears option that asks for it
KERNELS = {
    "amx": (amx_matmul.load, {"amx_tiles": True}),
    "avx512-bf16": (bf16_matmul.load, {"bf16_blocks": True}),
}
pytestmark = [pytest.mark.unit]


@pytest.fixture(params=list(KERNELS))
def kernel(request: pytest.FixtureRequest) -> tuple[bf16_matmul.StepMatmul | None, dict]:
    """(the kernel where this CPU runs it, else None; its pack_linears option)"""
    load, option = KERNELS[request.param]
    return (load() if kernels.available() else None), option


@pytest.fixture
def ops(kernel: tuple[bf16_matmul.StepMatmul | None, dict]) -> bf16_matmul.StepMatmul:
    if kernel[0] is None:
        pytest.skip("this CPU does not run the kernel")
    return kernel[0]


def _random(shape: tuple[int, ...], seed: int, scale: float = 1.0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=generator) * scale).to(torch.bfloat16)


@pytest.mark.parametrize(("n", "k"), [(960, 576), (576, 1536), (3072, 576), (49152 // 16, 576)])
def test_the_product_is_x_times_the_weights(ops: bf16_matmul.StepMatmul, n: int, k: int) -> None:
    w, x, b = _random((n, k), n, 0.05), _random((23, k), k), _random((n,), 1)
    got = ops.matmul(x, ops.pack(w), b)
    assert got.dtype == torch.bfloat16 and got.shape == (23, n)
    want = x.double() @ w.double().T + b.double()
    # fp32 sums, one rounding to bf16 (2^-9 relative)
    assert torch.allclose(got.double(), want, rtol=2**-8, atol=1e-3)


def test_a_rows_bits_do_not_depend_on_the_row_count_or_the_threads(
    ops: bf16_matmul.StepMatmul,
) -> None:
    tiles = ops.pack(_random((576, 1536), 2, 0.05))
    x = _random((45, 1536), 3)  # blocks of 16, a partial last one
    whole = ops.matmul(x, tiles)
    for first, count in ((0, 1), (7, 1), (0, 2), (3, 8), (0, 16), (14, 5), (16, 29), (40, 5)):
        part = ops.matmul(x[first : first + count].clone(), tiles)
        assert torch.equal(part, whole[first : first + count]), (first, count)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert torch.equal(ops.matmul(x, tiles), whole)
    finally:
        torch.set_num_threads(threads)


def _block() -> nn.Module:
    block = nn.Module()
    for name, (n, k) in {
        "q_proj": (64, 64), "k_proj": (32, 64), "v_proj": (32, 64), "o_proj": (64, 64),
    }.items():  # fmt: skip
        layer = nn.Linear(k, n, bias=False).to(torch.bfloat16)
        layer.weight.data = _random((n, k), n + k, 0.1)
        setattr(block, name, layer)
    return block


@torch.inference_mode()
def test_packed_linears_run_the_kernel_in_decode_steps_or_for_every_row(
    ops: bf16_matmul.StepMatmul, kernel: tuple[bf16_matmul.StepMatmul | None, dict]
) -> None:
    block = _block()
    plain = {name: m.weight.clone() for name, m in block.named_children()}
    assert packed_linear.pack_linears(block, **kernel[1]) == 4
    assert packed_linear.steps_run_bf16_kernel(block)
    assert packed_linear.steps_read_panels(block)  # a lone row may step alone
    x = _random((6, 64), 10)
    for name, weight in plain.items():
        module = getattr(block, name)
        with packed_linear.decode_rows():
            in_step = module(x)
        # a sibling's columns of the group's product are its own product's bits
        assert torch.equal(in_step, ops.matmul(x, ops.pack(weight))), name
        outside = module(x)  # outside a step: the kernel where it serves prompts, else oneDNN
        if ops.serves_prompts:
            assert torch.equal(outside, in_step), name
            own = module._siblings[0].packed if module._siblings else module._packed
            assert own.numel() == 0  # no oneDNN copy kept for nothing
        else:
            assert torch.allclose(outside.float(), in_step.float(), rtol=2**-7, atol=1e-2)
    assert_calls_agree_and_unpack(block, x)


def test_weights_it_does_not_take_keep_onednn(
    ops: bf16_matmul.StepMatmul, kernel: tuple[bf16_matmul.StepMatmul | None, dict]
) -> None:
    odd = nn.Linear(64, 40, bias=False).to(torch.bfloat16)  # 40 outputs: not a multiple of 16
    model = nn.ModuleDict({"odd": odd, "fine": nn.Linear(64, 64).to(torch.bfloat16)})
    packed_linear.pack_linears(model, **kernel[1])
    assert model["odd"]._panels is None and model["fine"]._panels is not None
    assert not packed_linear.steps_read_panels(model)  # one Linear without: the idle row stays


def _tiny_llama() -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        tie_word_embeddings=True,
    )  # fmt: skip
    torch.manual_seed(11)
    return LlamaForCausalLM(config).eval().to(torch.bfloat16)


@torch.inference_mode()
def test_a_tiny_bf16_model_decodes_a_row_the_same_in_any_company(
    kernel: tuple[bf16_matmul.StepMatmul | None, dict],
) -> None:
    """End to end on a random bf16 LLaMA with the kernel where this CPU runs it: a row's
    tokens and rating alone (stepping alone: no idle neighbour) as among five. Elsewhere the
    option leaves oneDNN's steps, and the lone row keeps its idle neighbour."""
    from serving.engine.cpu.attention import use_engine_attention
    from serving.engine.cpu.slot_decoding import SlotBatch

    if not packed_linear.available(torch.bfloat16):
        pytest.skip("no oneDNN bf16 matmul on this CPU")
    model = _tiny_llama()
    use_engine_attention(model, use_kernels=True)
    packed_linear.pack_linears(model, **kernel[1])
    runs = kernel[0] is not None
    assert (model.lm_head._panels is not None) == runs

    lone = SlotBatch(model, slots=2, width=12, max_new_tokens=4, pad_id=0, eos_id=95)
    assert lone.lone_row_alone == runs
    assert_alone_as_together(model)
