"""bf16 rows times bf16 weights on AMX tiles (``amx_matmul.c``): a bf16 model's decode-step
matmuls on CPUs with AMX (``cpu.amx_matmul``).

oneDNN's AMX matmuls choose their blocking by the row count, so a row's bits move with the
rows beside it (measured on the AMX Xeon of 2026-12-01: a 42-row block alone and inside 672
rows differ). A decode row therefore stepped beside an idle one, and ratings could not share
a matmul. Here a row's sums are its own 16-row block's tile products over the inputs in order,
so its bits do not depend on the row count or the threads (tests/test_amx_matmul.py). At a
decode step's 1-16 rows that is what oneDNN's AMX kernel computes too: the same bits (so
summaries do not move), and on that machine all of a step's matmuls out of cache took 10.1-11.1
ms at 2-16 rows against oneDNN's 12.4-15.1. Rating passes (~42 rows each) run on it as well,
so rows ending together share them. Weights are packed once at load into AMX's tile layout: a
second copy of the bf16 weights (prompts keep oneDNN's, faster at hundreds of rows).
"""

from __future__ import annotations

import ctypes
import functools
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from serving import kernels

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("amx_matmul.c")


def open_library(path: Path) -> ctypes.CDLL:
    library = ctypes.CDLL(str(path))
    library.newsdesk_amx_ready.restype = ctypes.c_int
    library.newsdesk_amx_ready.argtypes = []
    fn = library.newsdesk_amx_pack
    fn.restype = None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_long, ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
    fn = library.newsdesk_amx_matmul
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.c_void_p, ctypes.c_long] + [ctypes.c_void_p] * 3 + [ctypes.c_int] * 4
    return library


@dataclass(frozen=True)
class Tiles:
    """An ``(out_features, in_features)`` bf16 weight packed for :meth:`AmxMatmul.matmul`."""

    data: torch.Tensor
    out_features: int
    in_features: int
    address: int  # data's, taken once: a decode step makes ~120 calls


@dataclass(frozen=True)
class AmxMatmul:
    library: ctypes.CDLL

    @staticmethod
    def fits(weight: torch.Tensor) -> bool:
        """The weights it takes: bf16, out_features a multiple of 32, in_features of 32."""
        n, k = weight.shape
        return weight.dtype == torch.bfloat16 and n % 32 == 0 and k % 32 == 0

    def pack(self, weight: torch.Tensor) -> Tiles:
        n, k = weight.shape
        source = weight.detach().contiguous()
        data = torch.empty(n * k, dtype=torch.bfloat16)
        self.library.newsdesk_amx_pack(source.data_ptr(), k, data.data_ptr(), n, k)
        return Tiles(data, n, k, data.data_ptr())

    def matmul(
        self, x: torch.Tensor, tiles: Tiles, bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``x @ weight.T + bias`` for bf16 ``x`` of ``(..., in_features)``: ``(rows,
        out_features)`` bf16, ``rows`` the product of ``x``'s leading dimensions."""
        flat = x if x.dim() == 2 else x.reshape(-1, tiles.in_features)
        if flat.stride(-1) != 1:
            flat = flat.contiguous()
        out = torch.empty(flat.shape[0], tiles.out_features, dtype=torch.bfloat16)
        if bias is not None:
            bias = bias.detach().contiguous()
        status = self.library.newsdesk_amx_matmul(
            flat.data_ptr(),
            flat.stride(0),
            tiles.address,
            None if bias is None else bias.data_ptr(),
            out.data_ptr(),
            flat.shape[0],
            tiles.out_features,
            tiles.in_features,
            torch.get_num_threads(),
        )
        if status != 0:
            raise RuntimeError("newsdesk_amx_matmul refused its shapes")
        return out


def _agrees(ops: AmxMatmul) -> bool:
    """The build computes ``x @ w.T + b`` (to bf16's rounding of fp32 sums)."""
    generator = torch.Generator().manual_seed(0)
    for n, k, rows in ((64, 96, 3), (96, 64, 21)):
        w = torch.randn((n, k), generator=generator).to(torch.bfloat16)
        x = torch.randn((rows, k), generator=generator).to(torch.bfloat16)
        b = torch.randn(n, generator=generator).to(torch.bfloat16)
        got = ops.matmul(x, ops.pack(w), b).double()
        want = x.double() @ w.double().T + b.double()
        if not torch.allclose(got, want, rtol=1e-2, atol=1e-2):
            return False
    return True


@functools.cache
def load() -> AmxMatmul | None:
    """The kernel where this CPU and this process run AMX tiles and it computes right here,
    else None (decode steps keep oneDNN)."""
    library = kernels.open_built(SOURCE, kernels.FLAGS, open_library, "oneDNN's matmuls instead")
    if library is None or not library.newsdesk_amx_ready():
        return None
    ops = AmxMatmul(library)
    if not _agrees(ops):
        log.warning("the AMX matmul gives wrong products here: decode steps keep oneDNN's")
        return None
    return ops
