"""fp32 rows times weights held in fp16 (``fp16_weights.c``): a decode step's matmuls where the
model runs in fp32 (CPUs without native bf16 matmuls).

Such a step is bound by reading the weights, 540 MB of fp32 for SmolLM2-135M at every step.
With the weights rounded to fp16 at load and read as fp16 (widened exactly by F16C), the
step's matmuls read half the bytes and compute in fp32: what OpenVINO does with fp16 weights on
such CPUs. fp16 keeps 11 bits of mantissa where bf16 keeps 8: weights rounded to bf16 changed
5 of 108 real-news summaries, each for the worse (docs/engine.md). oneDNN offers no fp32 x
fp16 matmul there, hence this kernel. Measured on a 2-core AVX-512 Xeon without BF16
(2026-12-01), all of a decode step's matmuls on out-of-cache weights: 16.1 / 21.1 / 30.7 ms at
2 / 8 / 16 rows against oneDNN's fp32 25.2 / 32.5 / 39.7 ms (the bf16 build; fp16's reads the
same bytes).

Each output is one chain of fused multiply-adds over the inputs in order, so a row's bits do not
depend on the rows beside it or their number (batch invariance, whatever the row count), and
every build (AVX-512, AVX2, portable) gives the same bits:
tests/serving/engine/cpu/test_fp16_weights.py.
"""

from __future__ import annotations

import ctypes
import functools
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from serving.engine.cpu import kernels

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("fp16_weights.c")
FLAGS = (*kernels.FLAGS, "-ffp-contract=off")  # the only fused multiply-adds are the chains'
PANEL = 32  # output columns a packed panel


def open_library(path: Path) -> ctypes.CDLL:
    library = ctypes.CDLL(str(path))
    fn = library.newsdesk_fp16w_pack
    fn.restype = None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_long, ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
    fn = library.newsdesk_fp16w_matmul
    fn.restype = ctypes.c_int
    fn.argtypes = (
        [ctypes.c_void_p, ctypes.c_long]
        + [ctypes.c_void_p] * 3
        + [ctypes.c_long]
        + [ctypes.c_int] * 4
    )
    return library


@dataclass(frozen=True)
class Panels:
    """An ``(out_features, in_features)`` weight packed for :meth:`Fp16Weights.matmul`."""

    data: torch.Tensor  # fp16, ceil(out / 32) panels of [in][32]
    out_features: int
    in_features: int
    address: int  # data's, taken once: a decode step makes ~120 calls


@dataclass(frozen=True)
class Fp16Weights:
    library: ctypes.CDLL

    def pack(self, weight: torch.Tensor) -> Panels:
        """``weight`` (any float dtype; rounded to nearest even fp16) in panels."""
        n, k = weight.shape
        source = weight.detach().to(torch.float16).contiguous()
        data = torch.empty(-(-n // PANEL) * PANEL * k, dtype=torch.float16)
        self.library.newsdesk_fp16w_pack(source.data_ptr(), k, data.data_ptr(), n, k)
        return Panels(data, n, k, data.data_ptr())

    def matmul(
        self, x: torch.Tensor, panels: Panels, bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``x @ weight.T + bias`` for fp32 ``x`` of ``(..., in_features)``: ``(rows,
        out_features)`` fp32, ``rows`` the product of ``x``'s leading dimensions."""
        # kept to the fewest PyTorch calls: at one row a call's Python costs as much as its
        # arithmetic on some CPUs (each PyTorch call ~3 us on a 2 GHz Zen)
        flat = x if x.dim() == 2 else x.reshape(-1, panels.in_features)
        if flat.stride(-1) != 1:
            flat = flat.contiguous()
        rows = flat.shape[0]
        out = torch.empty(rows, panels.out_features, dtype=torch.float32)  # (no tuple: faster)
        if bias is not None:
            bias = bias.detach().float().contiguous()
        self.library.newsdesk_fp16w_matmul(
            flat.data_ptr(),
            flat.stride(0),
            panels.address,
            None if bias is None else bias.data_ptr(),
            out.data_ptr(),
            panels.out_features,
            rows,
            panels.out_features,
            panels.in_features,
            torch.get_num_threads(),
        )
        return out


def _agrees(ops: Fp16Weights) -> bool:
    """The build computes ``x @ w.T + b`` (against float64, to fp32's rounding over the sum)."""
    generator = torch.Generator().manual_seed(0)
    for n, k, rows in ((70, 300, 3), (96, 64, 9)):
        w = torch.randn((n, k), generator=generator).to(torch.float16)
        x, b = torch.randn((rows, k), generator=generator), torch.randn(n, generator=generator)
        got = ops.matmul(x, ops.pack(w), b).double()
        want = x.double() @ w.double().T + b.double()
        if not torch.allclose(got, want, rtol=1e-4, atol=1e-4 * k**0.5):
            return False
    return True


def load_from(path: Path) -> Fp16Weights | None:
    """The kernel of the library at ``path`` (another build: tests), None where it is wrong."""
    ops = Fp16Weights(open_library(path))
    return ops if _agrees(ops) else None


@functools.cache
def load() -> Fp16Weights | None:
    """The compiled kernel, or None (logged once) where it cannot be built or is wrong here."""
    library = kernels.open_built(SOURCE, FLAGS, open_library, "decode steps read fp32 weights")
    if library is None:
        return None
    ops = Fp16Weights(library)
    if not _agrees(ops):  # a miscompiled build: fp32 reads, never wrong products
        log.warning("fp16-weight kernel gives wrong products here: decode steps read fp32 weights")
        return None
    return ops
