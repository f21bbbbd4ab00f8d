"""Linear layers on CPU with oneDNN's weight layout prepared once, not at every call.

PyTorch's bf16 ``F.linear`` on CPU runs oneDNN's matmul, which first reorders the weight into
its blocked layout: at every call, so a decode step reads each weight matrix, writes a
reordered copy and reads that again. Decode steps are bound by reading the weights (270 MB of
bf16 for SmolLM2-135M at any batch size), and the reorder doubled their cost: all of the
model's matmuls at 8 rows took 18.8 ms with ``F.linear`` and 9.4 ms on weights reordered once
(``torch.ops.mkldnn._reorder_linear_weight``, then ``_linear_pointwise``: the ops torch.compile
emits for a frozen bf16 Linear on CPU), 2-core AVX512-BF16 machine.

The arithmetic is the same oneDNN kernel's, so the output is bit-identical to ``F.linear``'s
(checked for every projection shape at 1-16 rows, ``tests/serving/engine/cpu/test_fast_paths.py``):
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

An fp32 model's weights rounded to fp16 values (``cpu.fp16_weights``, :func:`round_to_fp16`)
also get fp16 panels (:mod:`serving.engine.cpu.kernels.fp16_weights`): inside a decode step
(:func:`decode_rows`) their matmuls read those, half the bytes, each output a fixed chain of
sums whatever the row count; prompts and rating passes keep oneDNN's fp32 matmuls on the same
values. +270 MB for SmolLM2-135M.

A bf16 model's weights get the layout of the engine's own bf16 kernel where the CPU runs one
(:mod:`serving.engine.cpu.kernels.bf16_matmul`: AMX tiles, ``cpu.amx_matmul``, or AVX512-BF16 dot
products, ``cpu.bf16_matmul``), whose every output row is its own fixed sum at any row count:
decode steps and rating passes run on it, and on the AVX512-BF16 kernel, which is faster than
oneDNN at a prompt's hundreds of rows too, every inference row does, oneDNN's copy not kept.

The cost is memory: the plain weights stay (PEFT merges into them, the tied output layer is
the embedding table, training reads them), so a replica holds the Linear weights twice (+270
MB for SmolLM2-135M in bf16, +540 MB in fp32). ``cpu.packed_weights: false`` in a profile
turns it off.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import itertools
from collections.abc import Iterator

import torch
from torch import nn
from torch.nn import functional as F

from serving.engine.cpu.kernels import amx_matmul, bf16_matmul, fp16_weights

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


# what a Linear holds instead of oneDNN's copy where its step layout serves every row (the
# AVX512-BF16 kernel's): nothing would read that copy (270 MB for SmolLM2-135M in bf16)
_NO_ONEDNN_COPY = torch.empty(0)


def _onednn_copy(weight: torch.Tensor, layout: StepLayout | None) -> torch.Tensor:
    """oneDNN's packed copy of ``weight``, or :data:`_NO_ONEDNN_COPY` where ``layout``'s
    kernel serves prompts too (:func:`_product` never asks oneDNN then)."""
    if type(layout) is bf16_matmul.Packed and layout.kernel.serves_prompts:
        return _NO_ONEDNN_COPY
    return _pack(weight)


def _matmul(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    flat = x.reshape(-1, x.shape[-1])
    return torch.ops.mkldnn._linear_pointwise(flat, packed, bias, "none", [], "")


# Set while a decode step runs (decode_rows): fp32 weights that also have fp16 panels are read
# from those in it, at every row count alike, so a row's bits never depend on its company.
_DECODE_ROWS = contextvars.ContextVar("newsdesk_decode_rows", default=False)


@contextlib.contextmanager
def decode_rows() -> Iterator[None]:
    """The matmuls run in this context are a decode step's: weights packed with fp16 panels
    (:func:`pack_linears` with ``fp16_panels``) run on them
    (:mod:`serving.engine.cpu.kernels.fp16_weights`: half the bytes read), bf16 weights packed for
    the engine's AMX or AVX512-BF16 kernel (``amx_tiles``, ``bf16_blocks``) on it
    (:mod:`serving.engine.cpu.kernels.bf16_matmul`: a row's bits at any row count); prompts, outside
    it, run oneDNN's matmul on the same values, except on a kernel that serves prompts too (the
    AVX512-BF16 one)."""
    token = _DECODE_ROWS.set(True)
    try:
        yield
    finally:
        _DECODE_ROWS.reset(token)


# the decode-step layouts a weight may have besides oneDNN's: fp16 panels (an fp32 model's
# weights) or a bf16 model's packed for the engine's AMX or AVX512-BF16 kernel
StepLayout = fp16_weights.Panels | bf16_matmul.Packed


def in_decode_rows() -> bool:
    """Whether the matmuls called now are a decode step's (:func:`decode_rows`)."""
    return _DECODE_ROWS.get()


def _product(
    x: torch.Tensor,
    packed: torch.Tensor,
    panels: StepLayout | None,
    bias: torch.Tensor | None,
) -> torch.Tensor:
    if type(panels) is bf16_matmul.Packed and (panels.kernel.serves_prompts or _DECODE_ROWS.get()):
        return panels.kernel.matmul(x, panels, bias)
    if panels is not None and _DECODE_ROWS.get():
        kernel = fp16_weights.load()
        assert kernel is not None  # panels are made only where their kernel loads
        return kernel.matmul(x, panels, bias)
    return _matmul(x, packed, bias)


def _step_kernel(amx: bool, dpbf16: bool) -> bf16_matmul.StepMatmul | None:
    """The engine's kernel for a bf16 model's decode steps: AMX tiles with ``amx`` where they
    run, else AVX512-BF16 dot products with ``dpbf16`` where those run, else None (oneDNN's)."""
    found = amx_matmul.load() if amx else None
    if found is None and dpbf16:
        found = bf16_matmul.load()
    return found


def _step_layout(
    weight: torch.Tensor,
    kernel: fp16_weights.Fp16Weights | None,
    steps: bf16_matmul.StepMatmul | None,
) -> StepLayout | None:
    """``weight``'s decode-step layout: fp16 panels with ``kernel`` (an fp32 weight holding
    fp16 values), packed for ``steps`` (a bf16 weight of the shapes it takes), else None."""
    if kernel is not None:
        return kernel.pack(weight)
    if steps is not None and steps.fits(weight):
        return steps.pack(weight)
    return None


class _Siblings:
    """Linears that a block calls one after another on the same input (q, k, v), packed as one
    matrix: the first member called on an input runs the matmul for all, and each member
    takes its columns once; a member called on another input (or twice) runs it again."""

    def __init__(
        self,
        members: list[PackedLinear],
        kernel: fp16_weights.Fp16Weights | None,
        steps: bf16_matmul.StepMatmul | None = None,
    ) -> None:
        self.members = tuple(members)
        weight = torch.cat([m.weight for m in members])
        self.panels = _step_layout(weight, kernel, steps)
        self.packed = _onednn_copy(weight, self.panels)
        biases = [m.bias for m in members]
        self.bias = None if biases[0] is None else torch.cat([b.detach() for b in biases])  # type: ignore[union-attr]
        self.sizes = [m.out_features for m in members]
        self.columns = list(itertools.pairwise([0, *itertools.accumulate(self.sizes)]))
        self.dtype = weight.dtype
        self._input: torch.Tensor | None = None
        self._output: torch.Tensor | None = None
        self._pending: set[int] = set()

    def output(self, index: int, x: torch.Tensor) -> torch.Tensor:
        if self._input is not x or index not in self._pending:
            self._output = _product(x, self.packed, self.panels, self.bias)
            self._input = x
            self._pending = set(range(len(self.members)))
        start, end = self.columns[index]
        out = self._output[:, start:end]  # type: ignore[index]
        self._pending.discard(index)
        if not self._pending:  # every member has its columns: hold no tensor past the block
            self._input = self._output = None
        return out


class PackedLinear(nn.Linear):
    """An ``nn.Linear`` whose inference forward uses its weight packed for oneDNN or for the
    engine's own kernels (alone, or as a member of :class:`_Siblings`)."""

    _packed: torch.Tensor | None = None
    _panels: StepLayout | None = None  # fp16 panels or a bf16 kernel's layout, for decode steps
    _siblings: tuple[_Siblings, int] | None = None
    _dtype: torch.dtype | None = None  # the weight's, when packed (read without __getattr__)

    def pack(
        self,
        kernel: fp16_weights.Fp16Weights | None = None,
        steps: bf16_matmul.StepMatmul | None = None,
    ) -> None:
        """oneDNN's layout, and for decode steps as well fp16 panels with ``kernel`` or the
        layout of the bf16 kernel ``steps``."""
        self._dtype = self.weight.dtype
        self._panels = _step_layout(self.weight, kernel, steps)
        self._packed = _onednn_copy(self.weight, self._panels)
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
            out = _product(x, packed, self._panels, self.bias)  # type: ignore[arg-type]
        return out.reshape(*x.shape[:-1], self.out_features)


def sibling_outputs(modules: tuple[nn.Module, ...], x: torch.Tensor) -> list[torch.Tensor] | None:
    """What calling each of ``modules`` on ``x`` returns, from one matmul, where they are the
    members of one sibling group in order, as packed (not wrapped by PEFT: a LoRA layer adds
    its own term) and ``x`` is what their forward packs for; else None (call the modules).
    The same bits as the calls: the same matmul, the same columns. For a step that calls
    them 30 times (:mod:`serving.engine.cpu.lean_step`), it saves each member's module call."""
    first = modules[0]
    if type(first) is not PackedLinear or first._siblings is None:
        return None
    group = first._siblings[0]
    if (
        tuple(modules) != group.members  # the same modules (identity), in order
        or any(m._siblings is None for m in modules)  # type: ignore[union-attr]
        or x.dtype != group.dtype
        or torch.is_grad_enabled()
    ):
        return None
    out = _product(x, group.packed, group.panels, group.bias)
    # views, as the members' own calls give (one split for all: fewer PyTorch calls a step)
    return list(out.view(*x.shape[:-1], out.shape[-1]).split(group.sizes, dim=-1))


def linear_output(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``module(x)``: for a packed Linear of its own (no sibling group) the same matmul called
    directly, without nn.Module's call and forward (a decode step makes 60 such calls; those
    add ~7-15 us of Python each on a 2 GHz CPU); anything else (PEFT's LoRA layers) is
    called."""
    if (
        type(module) is not PackedLinear
        or module._packed is None
        or module._siblings is not None
        or x.dtype != module._dtype
        or torch.is_grad_enabled()
    ):
        return module(x)
    out = _product(x, module._packed, module._panels, module.bias)
    return out.view(*x.shape[:-1], out.shape[-1])


def pack_linears(
    model: nn.Module, fp16_panels: bool = False, amx_tiles: bool = False, bf16_blocks: bool = False
) -> int:
    """Pack every bf16 or fp32 CPU Linear of ``model`` in place (LoRA's own small layers excepted:
    they stay plain); returns how many. Packs again the ones packed before (weights may have
    changed: a merged adapter). ``fp16_panels``: fp32 weights that hold fp16 values
    (:func:`round_to_fp16`'s) also get fp16 panels for decode steps (:func:`decode_rows`), where
    the kernel builds here: prompts and steps read the same values. ``amx_tiles``: bf16 weights
    also get AMX tiles for decode steps, where the CPU runs them
    (:mod:`serving.engine.cpu.kernels.amx_matmul`); ``bf16_blocks``: else the AVX512-BF16 kernel's
    layout, where the CPU runs that (:mod:`serving.engine.cpu.kernels.bf16_matmul`)."""
    kernel = fp16_weights.load() if fp16_panels else None
    steps = _step_kernel(amx_tiles, bf16_blocks)
    count = 0
    for name, module in model.named_modules():
        if type(module) not in (nn.Linear, PackedLinear) or "lora_" in name:
            continue
        weight = module.weight
        if not _packable(weight.dtype) or weight.device.type != "cpu":
            continue
        module.__class__ = PackedLinear
        panels = kernel is not None and _holds_fp16(weight)
        module.pack(kernel if panels else None, steps)  # type: ignore[attr-defined]
        count += 1
    _fuse_siblings(model, kernel, steps)
    return count


def steps_read_panels(model: nn.Module) -> bool:
    """Every Linear of ``model`` runs a decode step's matmul on fp16 panels or a bf16 kernel's
    layout (its own or its sibling group's): each output row is then its own fixed chain of
    sums at one row as at many, so a lone row needs no idle neighbour
    (serving.engine.cpu.slot_decoding). False with a LoRA layer (PEFT's own Linears run
    ``F.linear``) or any Linear without them."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return bool(linears) and all(
        type(m) is PackedLinear
        and (
            m._panels is not None or (m._siblings is not None and m._siblings[0].panels is not None)
        )
        for m in linears
    )


def steps_run_bf16_kernel(model: nn.Module) -> bool:
    """:func:`steps_read_panels`, with the engine's AMX or AVX512-BF16 kernel (not fp16
    panels) for every Linear: matmuls that then keep a row's bits at any row count in
    :func:`decode_rows`, at a few hundred rows as fast as oneDNN's (rating passes run there:
    serving.engine.cpu.slot_decoding)."""
    layouts = [
        m._panels if m._siblings is None else m._siblings[0].panels
        for m in model.modules()
        if type(m) is PackedLinear
    ]
    return steps_read_panels(model) and all(type(t) is bf16_matmul.Packed for t in layouts)


@torch.no_grad()
def round_to_fp16(model: nn.Module) -> int:
    """Round every fp32 Linear weight of ``model`` (LoRA's own layers excepted; the output
    layer's, and so a tied embedding table's) to the nearest fp16 value, in place: the values
    decode steps then read as fp16 (:func:`pack_linears` with ``fp16_panels``) and prompts as
    fp32, both exact. A weight with a value beyond fp16's range (65504) is left as it is, and
    gets no panels. Idempotent; returns how many were rounded."""
    count = 0
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear) or "lora_" in name:
            continue
        weight = module.weight
        if weight.dtype == torch.float32 and weight.device.type == "cpu" and _fits_fp16(weight):
            weight.copy_(weight.to(torch.float16))
            count += 1
    return count


def _fits_fp16(weight: torch.Tensor) -> bool:
    return bool(weight.abs().max() <= torch.finfo(torch.float16).max)


def _holds_fp16(weight: torch.Tensor) -> bool:
    """An fp32 weight whose every value is an fp16 value (:func:`round_to_fp16`'s): its fp16
    panels hold the very values prompts read."""
    return weight.dtype == torch.float32 and torch.equal(weight, weight.to(torch.float16).float())


# a block's projections of one input, by attribute name (LLaMA-style models)
SIBLINGS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


def _fuse_siblings(
    model: nn.Module,
    kernel: fp16_weights.Fp16Weights | None = None,
    steps: bf16_matmul.StepMatmul | None = None,
) -> int:
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
            # panels or tiles for the group where each member got its own (just packed)
            own = all(m._panels is not None for m in members)  # type: ignore[union-attr]
            group = _Siblings(
                members,  # type: ignore[arg-type]
                kernel if own and kernel is not None else None,
                steps if own and kernel is None else None,
            )
            for index, member in enumerate(members):
                member._packed = member._panels = None  # type: ignore[union-attr]
                member._siblings = (group, index)  # type: ignore[union-attr]
            groups += 1
    return groups
