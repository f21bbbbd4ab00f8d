"""What every decode-step layout of packed Linears must keep
(tests/serving/engine/cpu/test_fp16_weights.py, tests/serving/engine/cpu/test_step_matmuls.py)."""

from __future__ import annotations

import contextlib

import torch

from serving.engine.cpu import packed_linear


def assert_calls_agree_and_unpack(block: torch.nn.Module, x: torch.Tensor) -> None:
    """On ``block`` (q/k/v/o projections, packed with a step layout): the q/k/v group's one
    matmul gives what each member's call gives in a step, and a packed Linear's matmul called
    directly its module call's bits, in a step and out. Then packed without the layout: none
    left, and a step runs oneDNN's matmul."""
    group = (block.q_proj, block.k_proj, block.v_proj)
    with packed_linear.decode_rows():
        fused = packed_linear.sibling_outputs(group, x)
        called = [m(x) for m in group]
    assert fused is not None and all(map(torch.equal, fused, called))
    for context in (packed_linear.decode_rows, contextlib.nullcontext):
        with context():
            assert torch.equal(packed_linear.linear_output(block.o_proj, x), block.o_proj(x))
    packed_linear.pack_linears(block)
    assert not packed_linear.steps_read_panels(block)
    with packed_linear.decode_rows():
        assert torch.equal(block.o_proj(x), packed_linear._matmul(x, block.o_proj._packed, None))
