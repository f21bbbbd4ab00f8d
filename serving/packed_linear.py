"""bf16 Linear layers on CPU with oneDNN's weight layout prepared once, not at every call.

PyTorch's bf16 ``F.linear`` on CPU runs oneDNN's matmul, which first reorders the weight into
its blocked layout: at every call, so a decode step reads each weight matrix, writes a
reordered copy and reads that again. Decode steps are bound by reading the weights (270 MB of
bf16 for SmolLM2-135M at any batch size), and the reorder doubled their cost: all of the
model's matmuls at 8 rows took 18.8 ms with ``F.linear`` and 9.4 ms on weights reordered once
(``torch.ops.mkldnn._reorder_linear_weight``, then ``_linear_pointwise``: the ops torch.compile
emits for a frozen bf16 Linear on CPU), 2-core AVX512-BF16 machine.

The arithmetic is the same oneDNN kernel's, so the output is bit-identical to ``F.linear``'s
(checked for every projection shape at 1-16 rows, ``tests/test_engine_cpu_kernels.py``):
summaries, ratings and batch invariance do not move.

:class:`PackedLinear` is an ``nn.Linear`` (same parameters, state dict and module names, so
PEFT wraps it like any Linear, and training sees a plain Linear with grad enabled); only its
forward differs, and only in inference on bf16 inputs. The packed copy follows the weights it
was made from: :func:`pack_linears` runs again after every adapter change (the engine's
``loading.finish``), and a merged adapter's weights are packed anew.

The cost is memory: the plain weights stay (PEFT merges into them, the tied output layer is
the embedding table, training reads them), so a replica holds the Linear weights twice (+270
MB for SmolLM2-135M in bf16). ``cpu.packed_weights: false`` in a profile turns it off.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

# the rows oneDNN is told to expect; any row count runs on the same layout (measured: 2-16
# decode rows and 500-row prefills within noise of layouts made for them)
_ROWS_HINT = 512


def available() -> bool:
    """oneDNN bf16 matmuls exist on this CPU build (x86 with mkldnn)."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


class PackedLinear(nn.Linear):
    """An ``nn.Linear`` whose inference forward uses its weight packed for oneDNN."""

    _packed: torch.Tensor | None = None

    def pack(self) -> None:
        weight = self.weight.detach()
        self._packed = torch.ops.mkldnn._reorder_linear_weight(weight, _ROWS_HINT)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        packed = self._packed
        if packed is None or x.dtype != torch.bfloat16 or torch.is_grad_enabled():
            return F.linear(x, self.weight, self.bias)
        flat = x.reshape(-1, self.in_features)
        out = torch.ops.mkldnn._linear_pointwise(flat, packed, self.bias, "none", [], "")
        return out.reshape(*x.shape[:-1], self.out_features)


def pack_linears(model: nn.Module) -> int:
    """Pack every bf16 CPU Linear of ``model`` in place (LoRA's own small layers excepted:
    they stay plain); returns how many. Packs again the ones packed before (weights may have
    changed: a merged adapter)."""
    count = 0
    for name, module in model.named_modules():
        if type(module) not in (nn.Linear, PackedLinear) or "lora_" in name:
            continue
        weight = module.weight
        if weight.dtype != torch.bfloat16 or weight.device.type != "cpu":
            continue
        module.__class__ = PackedLinear
        module.pack()  # type: ignore[attr-defined]
        count += 1
    return count
