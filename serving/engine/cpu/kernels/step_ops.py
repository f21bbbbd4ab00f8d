"""A decode step's residual adds, RMSNorms, rotary embeddings and cache writes in C
(``step_ops.c``, whose comments say how each keeps PyTorch's bits), for
:mod:`serving.engine.cpu.lean_step`.

In PyTorch these are ~30 small ops a layer, each a dispatch and an allocation around a few KB
of arithmetic: ~6 of a 34 ms decode step at 8 rows on a 2-core Zen 4. :class:`StepOps` does a
layer's share in three calls (norm before attention, rotary + cache write, norm before the
MLP) and gives the model's own bits, so summaries, ratings and batch invariance cannot move.

The RMSNorm's one sum must run in PyTorch's order, which depends on PyTorch's vector width on
this CPU. :func:`load` finds that width by asking PyTorch (the mean of squares of probe rows,
bit for bit) and then checks both operations against the model's own on probe data; where
anything differs (another PyTorch, a CPU whose width it does not find) it logs once and returns
None, and the lean step keeps PyTorch's ops: slower, never other bits.
"""

from __future__ import annotations

import ctypes
import functools
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers.models.llama import modeling_llama

from serving.engine.cpu import kernels

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("step_ops.c")
# PyTorch rounds every product and sum on its own: no fused multiply-adds in this build
FLAGS = (*kernels.FLAGS, "-ffp-contract=off")
MAX_HIDDEN = 8192  # step_ops.c's row buffers
# fp32 vector widths PyTorch's sums may use: 16 (AVX-512 kernels), 8 (AVX2 and default; also
# what PyTorch 2.13's sum used on the AVX-512 Zen 4 of 2026-12-01), 4 (NEON)
_WIDTHS = (16, 8, 4)
DTYPES = (torch.bfloat16, torch.float32)


def open_library(path: Path) -> ctypes.CDLL:
    library = ctypes.CDLL(str(path))
    fn = library.newsdesk_mean_square
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.c_void_p] * 2 + [ctypes.c_int] * 3
    fn = library.newsdesk_add_rmsnorm
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_int] * 2 + [ctypes.c_float] + [ctypes.c_int] * 3
    fn = library.newsdesk_rope_store
    fn.restype = ctypes.c_int
    fn.argtypes = (
        [ctypes.c_void_p] * 3
        + [ctypes.c_long] * 3
        + [ctypes.c_void_p] * 3
        + [ctypes.c_long] * 2
        + [ctypes.c_void_p] * 3
        + [ctypes.c_int] * 9
    )
    fn = library.newsdesk_silu_mul
    fn.restype = None
    fn.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_long, ctypes.c_void_p] + [ctypes.c_int] * 3
    return library


@dataclass(frozen=True)
class StepOps:
    """The compiled operations and the vector width of PyTorch's sums on this machine;
    ``silu``: the table of PyTorch's bf16 SiLU for :meth:`silu_mul` (None where the fused
    product does not give PyTorch's bits here: the step keeps F.silu and the product)."""

    library: ctypes.CDLL
    lanes: int
    silu: torch.Tensor | None = None

    def silu_mul(self, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        """``F.silu(gate) * up`` of a bf16 model's MLP (``gate`` and ``up`` the halves of one
        ``(..., 2n)`` matmul, or any two ``(..., n)`` tensors with the same row stride), in one
        pass: PyTorch's bits (``step_ops.c``)."""
        assert self.silu is not None and gate.dtype == up.dtype == torch.bfloat16
        n = gate.shape[-1]
        gate2, up2 = gate.reshape(-1, n), up.reshape(-1, n)
        if not (gate2.stride(-1) == up2.stride(-1) == 1 and gate2.stride(0) == up2.stride(0)):
            gate2, up2 = gate2.contiguous(), up2.contiguous()
        out = torch.empty(gate.shape, dtype=torch.bfloat16)
        self.library.newsdesk_silu_mul(
            self.silu.data_ptr(),
            gate2.data_ptr(),
            up2.data_ptr(),
            gate2.stride(0),
            out.data_ptr(),
            gate2.shape[0],
            n,
            torch.get_num_threads(),
        )
        return out

    def add_rmsnorm(
        self, hidden: torch.Tensor, delta: torch.Tensor | None, norm: torch.nn.Module
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(hidden + delta, norm(hidden + delta))`` for ``(..., hidden)`` tensors of the
        model's dtype (``delta`` None: ``(hidden, norm(hidden))``), ``norm`` a LlamaRMSNorm."""
        hidden = hidden.contiguous()
        delta = None if delta is None else delta.contiguous()
        residual = hidden if delta is None else torch.empty_like(hidden)
        normed = torch.empty_like(hidden)
        status = self.library.newsdesk_add_rmsnorm(
            hidden.data_ptr(),
            None if delta is None else delta.data_ptr(),
            norm.weight.data_ptr(),
            None if delta is None else residual.data_ptr(),
            normed.data_ptr(),
            hidden.numel() // hidden.shape[-1],
            hidden.shape[-1],
            norm.variance_epsilon,
            self.lanes,
            hidden.dtype == torch.bfloat16,
            torch.get_num_threads(),
        )
        if status != 0:
            raise RuntimeError(f"newsdesk_add_rmsnorm refused a row of {hidden.shape[-1]}")
        return residual, normed

    def rope_store(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        key_cache: torch.Tensor,
        value_cache: torch.Tensor,
        columns: torch.Tensor,
        head_dim: int,
        slot: int | None = None,
    ) -> torch.Tensor:
        """The rotated queries in fp32 (as attention reads them), after writing the rotated
        keys and the values into the ``(slots, kv_heads, capacity, head_dim)`` caches: position
        ``i``'s into column ``columns[i]``.

        ``query``, ``key``, ``value``: ``(rows, positions, heads * head_dim)`` projections (rows
        may be strided: columns of one packed matmul); ``cos``, ``sin``: their rotary tables,
        ``(rows, positions, head_dim)``. A decode step (``slot`` None) has one position per row,
        row ``i`` in slot ``i``, and gets ``(rows, heads, 1, head_dim)`` queries; one row's
        positions (a prompt, a rating pass) go to ``slot`` and get ``(1, heads, positions,
        head_dim)``."""
        width = query.shape[-1]
        # the C code takes positions at any stride, the elements of one in order
        query, key, value = (t.reshape(-1, t.shape[-1]) for t in (query, key, value))
        query, key, value = (
            t if t.stride(-1) == 1 else t.contiguous() for t in (query, key, value)
        )
        cos, sin = cos.contiguous(), sin.contiguous()
        columns = columns.to(torch.int64).contiguous()
        positions = query.shape[0]
        heads = width // head_dim
        kv_heads, capacity = key_cache.shape[1], key_cache.shape[2]
        if slot is None:  # (rows, heads, 1, dim): a position's heads together
            out = torch.empty((positions, heads, 1, head_dim), dtype=torch.float32)
            out_row, out_head, first, step = heads * head_dim, head_dim, 0, 1
        else:  # (1, heads, positions, dim): a head's positions together
            out = torch.empty((1, heads, positions, head_dim), dtype=torch.float32)
            out_row, out_head, first, step = head_dim, positions * head_dim, slot, 0
        status = self.library.newsdesk_rope_store(
            query.data_ptr(),
            key.data_ptr(),
            value.data_ptr(),
            query.stride(0),
            key.stride(0),
            value.stride(0),
            cos.data_ptr(),
            sin.data_ptr(),
            out.data_ptr(),
            out_row,
            out_head,
            key_cache.data_ptr(),
            value_cache.data_ptr(),
            columns.data_ptr(),
            positions,
            first,
            step,
            heads,
            kv_heads,
            head_dim,
            capacity,
            key_cache.dtype == torch.bfloat16,
            torch.get_num_threads(),
        )
        if status != 0:
            raise RuntimeError(f"newsdesk_rope_store refused a head of {head_dim}")
        return out


def handles(model: torch.nn.Module, cache_dtype: torch.dtype) -> bool:
    """The shapes and dtypes :class:`StepOps` computes for a LLaMA model (see
    :func:`serving.engine.cpu.lean_step.applies`) whose slot cache holds ``cache_dtype``."""
    config = model.config
    inner = model.model
    dtype = next(model.parameters()).dtype
    norms = [inner.norm] + [
        norm
        for layer in inner.layers
        for norm in (layer.input_layernorm, layer.post_attention_layernorm)
    ]
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return (
        dtype in DTYPES
        and cache_dtype == dtype
        and config.hidden_size <= MAX_HIDDEN
        and head_dim % 2 == 0
        and head_dim <= 1024
        and all(
            type(norm) is modeling_llama.LlamaRMSNorm and norm.weight.dtype == dtype
            for norm in norms
        )
    )


def _width(library: ctypes.CDLL) -> int | None:
    """The vector width at which ``newsdesk_mean_square`` gives PyTorch's
    ``x.pow(2).mean(-1)`` bit for bit on probe rows (lengths with a scalar tail and with
    ATen's cascade levels; values over a wide range, where another order shows)."""
    generator = torch.Generator().manual_seed(0)
    probes = []
    for n in (576, 1000, 4096, 8192):
        x = torch.randn((8, 1, n), generator=generator)
        x = x * torch.exp(3 * torch.randn((8, 1, n), generator=generator))
        probes.append((x, x.pow(2).mean(-1).reshape(-1)))
    for lanes in _WIDTHS:
        same = True
        for x, expected in probes:
            got = torch.empty(x.shape[0], dtype=torch.float32)
            library.newsdesk_mean_square(
                x.data_ptr(), got.data_ptr(), x.shape[0], x.shape[-1], lanes
            )
            same = same and torch.equal(got, expected)
        if same:
            return lanes
    return None


def _agrees(ops: StepOps) -> bool:
    """Both operations give the model's own ops' bits on probe data, in bf16 and fp32: the
    norm with and without its add, the rotary embedding and cache write of a decode step
    (rows in their slots) and of one row's positions."""
    generator = torch.Generator().manual_seed(1)
    for dtype in DTYPES:
        x, delta = (torch.randn((5, 1, 576), generator=generator).to(dtype) for _ in "xd")
        norm = modeling_llama.LlamaRMSNorm(576, eps=1e-5).to(dtype)
        norm.weight.data = torch.rand(576, generator=generator).to(dtype) + 0.5
        residual, normed = ops.add_rmsnorm(x, delta, norm)
        if not (torch.equal(residual, x + delta) and torch.equal(normed, norm(x + delta))):
            return False
        if not torch.equal(ops.add_rmsnorm(x, None, norm)[1], norm(x)):
            return False
        if not (_rope_agrees(ops, dtype, 5, 1, None) and _rope_agrees(ops, dtype, 1, 6, 2)):
            return False
    return True


def _rope_agrees(
    ops: StepOps, dtype: torch.dtype, rows: int, positions: int, slot: int | None
) -> bool:
    generator = torch.Generator().manual_seed(2)
    heads, kv_heads, head_dim, slots, capacity = 9, 3, 64, 6, 9
    sizes = [heads * head_dim, kv_heads * head_dim, kv_heads * head_dim]
    qkv = torch.randn((rows, positions, sum(sizes)), generator=generator).to(dtype)
    q, k, v = qkv.split(sizes, -1)  # strided, as a packed matmul's columns
    angles = torch.randn((rows, positions, head_dim), generator=generator) * 3
    cos, sin = angles.cos().to(dtype), angles.sin().to(dtype)
    caches = [torch.zeros((slots, kv_heads, capacity, head_dim), dtype=dtype) for _ in "kv"]
    columns = torch.randperm(capacity, generator=generator)[: rows * positions]
    query = ops.rope_store(q, k, v, cos, sin, *caches, columns, head_dim, slot)
    shape = (rows, positions, -1, head_dim)
    want_q, want_k = modeling_llama.apply_rotary_pos_emb(
        q.reshape(shape).transpose(1, 2), k.reshape(shape).transpose(1, 2), cos, sin
    )
    want_v = v.reshape(shape).transpose(1, 2)
    if slot is None:  # row i's one position in slot i: (rows, kv_heads, head_dim)
        keys = caches[0][torch.arange(rows), :, columns]
        values = caches[1][torch.arange(rows), :, columns]
        want_k, want_v = want_k[:, :, 0], want_v[:, :, 0]
    else:  # the row's positions in `slot`: (kv_heads, positions, head_dim)
        keys, values = caches[0][slot][:, columns], caches[1][slot][:, columns]
        want_k, want_v = want_k[0], want_v[0]
    return (
        torch.equal(query, want_q.float())
        and torch.equal(keys, want_k)
        and torch.equal(values, want_v)
    )


def _silu_table() -> torch.Tensor:
    """PyTorch's F.silu of every bf16 value, by bits (and two entries the vector loop may
    read past the last)."""
    every = torch.arange(65536, dtype=torch.int32).to(torch.int16).view(torch.bfloat16)
    return torch.cat([torch.nn.functional.silu(every), torch.zeros(2, dtype=torch.bfloat16)])


def _silu_mul_agrees(ops: StepOps) -> bool:
    """:meth:`StepOps.silu_mul` gives ``F.silu(gate) * up`` bit for bit with every bf16 value
    as a gate (subnormals, infinities and NaNs included), on strided halves of one tensor as
    the MLP's matmul gives them, at a decode step's rows and a prompt's."""
    generator = torch.Generator().manual_seed(3)
    every = torch.arange(65536, dtype=torch.int32).to(torch.int16).view(torch.bfloat16)
    for rows, n in ((256, 256), (5, 1536), (40, 100)):  # gates: all, then the first values
        both = torch.randn((rows, 2 * n), generator=generator).to(torch.bfloat16)
        both[:, :n] = every[: rows * n].reshape(rows, n)
        gate, up = both.split(n, -1)
        want = torch.nn.functional.silu(gate) * up
        if not torch.equal(ops.silu_mul(gate, up).view(torch.int16), want.view(torch.int16)):
            return False
    return True


@functools.cache
def load() -> StepOps | None:
    """The compiled operations where they give PyTorch's bits here, else None (logged once).
    The fused SiLU product is checked on its own: without it the other operations stay."""
    library = kernels.open_built(SOURCE, FLAGS, open_library, "PyTorch's ops instead")
    if library is None:
        return None
    lanes = _width(library)
    ops = None if lanes is None else StepOps(library, lanes)
    if ops is None or not _agrees(ops):
        log.warning(
            "decode-step kernels do not give PyTorch %s's bits on this CPU: PyTorch's ops instead",
            torch.__version__,
        )
        return None
    fused = StepOps(library, lanes, _silu_table())
    if not _silu_mul_agrees(fused):
        log.warning("the fused SiLU product does not give PyTorch's bits here: F.silu instead")
        return ops
    return fused
