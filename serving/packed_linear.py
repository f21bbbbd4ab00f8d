"""Linear layers on CPU with oneDNN's weight layout prepared once, not at every call.

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
forward differs, and only in inference on inputs of its weight's dtype. The packed copy follows
the weights it was made from: :func:`pack_linears` runs again after every adapter change (the
engine's ``loading.finish``), and a merged adapter's weights are packed anew.

Sibling projections of one input (a block's q/k/v, its gate/up) are packed as one matrix and
run as one matmul (:class:`_Siblings`): each member hands back its columns of the shared
output. oneDNN computes every output column by the same reduction whatever the matrix's width,
so the bits are again ``F.linear``'s (tested), at 2 matmuls a block instead of 5 (a decode step
at 8 rows: 11.3 vs 13.3 ms of matmuls). PEFT's LoRA layers wrap the members and call each with
the block's input unchanged, so they compose.

fp32 weights (the default model on CPUs without native bf16) are packed the same way, for
another reason: PyTorch's fp32 ``F.linear`` calls MKL, whose small-M sgemm reads the weights at
a fraction of the machine's bandwidth (the output layer, 113 MB, took 30 ms at 2 rows on a
2-core AVX2 EPYC, against 12 ms in oneDNN; a whole decode step at 8 rows 208 -> 152 ms). Not
``F.linear``'s bits there (another library's summation order), but batch-invariant the same
way: a row's bits do not depend on the rows beside it or their number, from 2 to 16 and in
blocks of a prompt, for every projection shape, and a sibling group's columns are each member's
bits (tested). A single row can take oneDNN's one-row path (the down projection's bits moved
at one row on an AMX Xeon), as with bf16: a lone row steps beside an idle one. Its distance
from the unpacked engine is measured like any change of rounding (docs/engine.md).

The cost is memory: the plain weights stay (PEFT merges into them, the tied output layer is
the embedding table, training reads them), so a replica holds the Linear weights twice (+270
MB for SmolLM2-135M in bf16, +540 MB in fp32). ``cpu.packed_weights: false`` in a profile
turns it off.
"""

from __future__ import annotations

import functools
import itertools

import torch
from torch import nn
from torch.nn import functional as F

# the rows oneDNN is told to expect; any row count runs on the same layout (measured: 2-16
# decode rows and 500-row prefills within noise of layouts made for them)
_ROWS_HINT = 512


def available(dtype: torch.dtype = torch.float32) -> bool:
    """oneDNN matmuls for weights of ``dtype`` exist on this CPU build (x86 with mkldnn; bf16
    needs AVX-512 or AVX-NE-CONVERT: on an AVX2-only CPU oneDNN refuses to reorder bf16)."""
    if not (
        torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    ):
        return False
    if dtype == torch.bfloat16:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return dtype == torch.float32


@functools.cache
def _packable(dtype: torch.dtype) -> bool:
    return available(dtype)


def _pack(weight: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), _ROWS_HINT)


def _matmul(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    flat = x.reshape(-1, x.shape[-1])
    return torch.ops.mkldnn._linear_pointwise(flat, packed, bias, "none", [], "")


class _Siblings:
    """Linears that a block calls one after another on the same input (q, k, v), packed as one
    matrix: the first member called on an input runs the matmul for all, and each member
    takes its columns once; a member called on another input (or twice) runs it again."""

    def __init__(self, members: list[PackedLinear]) -> None:
        self.members = members
        self.packed = _pack(torch.cat([m.weight for m in members]))
        biases = [m.bias for m in members]
        self.bias = None if biases[0] is None else torch.cat([b.detach() for b in biases])  # type: ignore[union-attr]
        edges = [0]
        for m in members:
            edges.append(edges[-1] + m.out_features)
        self.columns = list(itertools.pairwise(edges))
        self._input: torch.Tensor | None = None
        self._output: torch.Tensor | None = None
        self._pending: set[int] = set()

    def output(self, index: int, x: torch.Tensor) -> torch.Tensor:
        if self._input is not x or index not in self._pending:
            self._output = _matmul(x, self.packed, self.bias)
            self._input = x
            self._pending = set(range(len(self.members)))
        start, end = self.columns[index]
        out = self._output[:, start:end]  # type: ignore[index]
        self._pending.discard(index)
        if not self._pending:  # every member has its columns: hold no tensor past the block
            self._input = self._output = None
        return out


class PackedLinear(nn.Linear):
    """An ``nn.Linear`` whose inference forward uses its weight packed for oneDNN (alone, or
    as a member of :class:`_Siblings`)."""

    _packed: torch.Tensor | None = None
    _siblings: tuple[_Siblings, int] | None = None

    def pack(self) -> None:
        self._packed = _pack(self.weight)
        self._siblings = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        packed, siblings = self._packed, self._siblings
        if (
            (packed is None and siblings is None)
            or x.dtype != self.weight.dtype
            or torch.is_grad_enabled()
        ):
            return F.linear(x, self.weight, self.bias)
        if siblings is not None:
            out = siblings[0].output(siblings[1], x)
        else:
            out = _matmul(x, packed, self.bias)  # type: ignore[arg-type]
        return out.reshape(*x.shape[:-1], self.out_features)


def sibling_outputs(modules: tuple[nn.Module, ...], x: torch.Tensor) -> list[torch.Tensor] | None:
    """What calling each of ``modules`` on ``x`` returns, from one matmul, where they are the
    members of one sibling group in order, as packed (not wrapped by PEFT: a LoRA layer adds
    its own term) and ``x`` is what their forward packs for; else None (call the modules).
    The same bits as the calls: the same matmul, the same columns. For a step that calls
    them 30 times (:mod:`serving.lean_step`), it saves each member's module call."""
    first = modules[0]
    if type(first) is not PackedLinear or first._siblings is None:
        return None
    group = first._siblings[0]
    if (
        len(modules) != len(group.members)
        or any(m is not g for m, g in zip(modules, group.members, strict=True))
        or any(type(m) is not PackedLinear or m._siblings is None for m in modules)
        or x.dtype != first.weight.dtype
        or torch.is_grad_enabled()
    ):
        return None
    out = _matmul(x, group.packed, group.bias)
    return [out[:, a:b].reshape(*x.shape[:-1], b - a) for a, b in group.columns]


def pack_linears(model: nn.Module) -> int:
    """Pack every bf16 or fp32 CPU Linear of ``model`` in place (LoRA's own small layers excepted:
    they stay plain); returns how many. Packs again the ones packed before (weights may have
    changed: a merged adapter)."""
    count = 0
    for name, module in model.named_modules():
        if type(module) not in (nn.Linear, PackedLinear) or "lora_" in name:
            continue
        weight = module.weight
        if not _packable(weight.dtype) or weight.device.type != "cpu":
            continue
        module.__class__ = PackedLinear
        module.pack()  # type: ignore[attr-defined]
        count += 1
    _fuse_siblings(model)
    return count


# a block's projections of one input, by attribute name (LLaMA-style models)
SIBLINGS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


def _fuse_siblings(model: nn.Module) -> int:
    """Pack each block's :data:`SIBLINGS` as one matrix (their own packed copies dropped);
    returns how many groups."""
    groups = 0
    for parent in model.modules():
        for names in SIBLINGS:
            # under PEFT each projection is a LoRA layer calling its plain one as base_layer
            found = [getattr(parent, n, None) for n in names]
            members = [getattr(m, "base_layer", m) for m in found]
            if not all(isinstance(m, PackedLinear) and m._packed is not None for m in members):
                continue
            if len({m.in_features for m in members}) != 1:
                continue
            if len({m.bias is None for m in members}) != 1:
                continue
            group = _Siblings(members)  # type: ignore[arg-type]
            for index, member in enumerate(members):
                member._packed = None  # type: ignore[union-attr]
                member._siblings = (group, index)  # type: ignore[union-attr]
            groups += 1
    return groups
