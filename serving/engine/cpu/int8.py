"""Optional CPU speed-ups of the model, each judged by its output quality (benchmarks/).

Where the time goes on the 2-core AVX2 machine (SmolLM2-135M, fp32, batch 8, 512-token
prompts): prefill is compute-bound (~100 GFLOP/s sgemm, near the machine's peak); a decode step
is bound by reading the weights (~540 MB of fp32 per step, ~6 GB/s), the 49152 x 576 output
layer alone ~30 ms of it.

- ``int8_decode``: weight-only int8 (per output channel) for the decode steps only. Each Linear
  keeps its fp32 weight for prefill (large matrices: MKL sgemm is fastest) and a packed int8
  copy used when a single position is fed (``torch._weight_int8pack_mm``, activations in
  bf16): a quarter of the bytes to read. Activations stay dynamic-range-free, unlike
  ``quantize_dynamic``, whose per-tensor int8 activations turned this model's summaries into
  loops.
  Measured not batch-invariant with the engine's old layout (the batch prefilled together):
  rounding activations to bf16 amplified the ~1e-6 differences that fp32 prefill of different
  batch shapes left, and a near-tie flipped (1 of 4 mixed-length Lee articles). With the
  fixed-slot layout (:mod:`serving.engine.cpu.decoding`) the benchmark's 4-article check passes, but
  on CPUs with native bf16 the bf16 profile is faster (README "Engine"), so no shipped profile
  enables it.
- ``dynamic_int8``: ``torch.ao.quantization.quantize_dynamic`` on every Linear, per-channel
  weights (``per_channel_dynamic_qconfig``), prefill and decode. Kept for comparison.
"""

from __future__ import annotations

import torch
from torch import nn


class Int8DecodeLinear(nn.Module):
    """A Linear that uses packed int8 weights when fed one position, fp32 otherwise."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.linear = linear  # keeps the fp32 weight (shared when tied) for prefill
        weight = linear.weight.detach().float()
        scales = weight.abs().amax(dim=1).clamp(min=1e-8) / 127.0
        # Plain attributes, not buffers: a later ``model.to(dtype)`` (DeepSpeed's dtype
        # conversion) must not turn the int8 weights or bf16 scales into floats.
        self.qweight = torch.round(weight / scales[:, None]).clamp(-127, 127).to(torch.int8)
        self.scales = scales.to(torch.bfloat16)
        self.in_features = linear.in_features
        self.out_features = linear.out_features

    @property
    def weight(self) -> torch.Tensor:  # what code that inspects a Linear expects
        return self.linear.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3 and x.shape[1] == 1 and not torch.is_grad_enabled():
            flat = x.reshape(-1, x.shape[-1]).to(torch.bfloat16)
            out = torch._weight_int8pack_mm(flat, self.qweight, self.scales)
            if self.linear.bias is not None:
                out = out + self.linear.bias.to(out.dtype)
            return out.to(x.dtype).reshape(*x.shape[:-1], self.out_features)
        return self.linear(x)


def apply_int8_decode(model: nn.Module) -> int:
    """Wrap every Linear of the decoder layers and the output layer; returns how many."""
    targets = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and (".layers." in f".{name}" or name.endswith("lm_head"))
    ]
    for name, module in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, Int8DecodeLinear(module))
    return len(targets)


def apply_dynamic_int8(model: nn.Module) -> nn.Module:
    """Per-channel dynamic int8 on every Linear (``torch.ao.quantization``), in place."""
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    return quantize_dynamic(
        model, {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8, inplace=True
    )
