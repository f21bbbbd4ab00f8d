"""A bf16 model's decode-step matmuls in the engine's own kernels: what they share, and the one
for CPUs with AVX512-BF16 (``bf16_matmul.c``, ``cpu.bf16_matmul``); the AMX one is
:mod:`serving.engine.cpu.kernels.amx_matmul` (``cpu.amx_matmul``, preferred where both run).

A decode step reads all of the model's weights for a few rows (1-16). oneDNN's bf16 matmul
reads them at about half of what the memory gives there (measured on the Zen 5 of 2026-12-01:
all 30 layers' packed matmuls out of cache 6.3-7.7 / 8.2-9.2 ms at 1 / 16 rows, 23-34 GB/s,
against ~45 GB/s for a plain read), and its blocking follows the row count, so a row's bits can
move with the rows beside it: a lone decode row stepped beside an idle one, and rows' rating
passes could share a matmul only where a probe found it safe. In ``bf16_matmul.c`` every output
is one fp32 sum over the inputs in order, a pair at a time: a row's bits at any row count and
thread count, by construction (tests/serving/engine/cpu/test_step_matmuls.py). There, 4.2-4.7 /
5.6-6.0 / 6.8-7.2 ms at 1 / 8 / 16 rows against oneDNN's 6.3-7.7 / 7.0-7.7 / 8.2-9.2, and at the
~42-672 rows of rating passes about oneDNN's speed or better. Its bits equal oneDNN's for the q/k/v
and gate/up shapes at 1-5 rows, not everywhere (the output layer's never): summaries move a little
(distance in docs/benchmarks.md).

Prompts run on it too (``StepMatmul.serves_prompts``): at a prompt's hundreds of rows it is
1.08-1.09x oneDNN's (962 against 886 GFLOP/s at 436 rows; the cores' peak is ~1,000), and a
prompt's bits then no longer depend on oneDNN's blocking either. Weights are packed once at
load into the kernel's layout: a second copy of the bf16 weights beside oneDNN's packed ones
(which the other paths keep: PyTorch's own calls, a model moved off this CPU).
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

SOURCE = Path(__file__).with_name("bf16_matmul.c")


@dataclass(frozen=True)
class Packed:
    """An ``(out_features, in_features)`` bf16 weight packed for ``kernel``'s :meth:`~StepMatmul.
    matmul`."""

    data: torch.Tensor
    out_features: int
    in_features: int
    address: int  # data's, taken once: a decode step makes ~120 calls
    kernel: StepMatmul


@dataclass(frozen=True)
class StepMatmul:
    """One of the engine's bf16 matmul kernels: its C ``pack(w, ldw, out, n, k)`` and
    ``matmul(x, ldx, packed, bias, out, m, n, k, threads)`` (0 when it ran), for weights whose
    shapes are multiples of ``multiples`` (out, in). ``serves_prompts``: prompts run on it too,
    not only decode steps and rating passes (it is at least oneDNN's speed at their hundreds of
    rows)."""

    name: str
    pack_fn: ctypes._CFuncPtr
    matmul_fn: ctypes._CFuncPtr
    multiples: tuple[int, int]
    serves_prompts: bool = False

    def fits(self, weight: torch.Tensor) -> bool:
        n, k = weight.shape
        return (
            weight.dtype == torch.bfloat16
            and n % self.multiples[0] == 0
            and k % self.multiples[1] == 0
        )

    def pack(self, weight: torch.Tensor) -> Packed:
        n, k = weight.shape
        source = weight.detach().contiguous()
        data = torch.empty(n * k, dtype=torch.bfloat16)
        self.pack_fn(source.data_ptr(), k, data.data_ptr(), n, k)
        return Packed(data, n, k, data.data_ptr(), self)

    def matmul(
        self, x: torch.Tensor, packed: Packed, bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``x @ weight.T + bias`` for bf16 ``x`` of ``(..., in_features)``: ``(rows,
        out_features)`` bf16, ``rows`` the product of ``x``'s leading dimensions."""
        flat = x if x.dim() == 2 else x.reshape(-1, packed.in_features)
        if flat.stride(-1) != 1:
            flat = flat.contiguous()
        out = torch.empty(flat.shape[0], packed.out_features, dtype=torch.bfloat16)
        if bias is not None:
            bias = bias.detach().contiguous()
        status = self.matmul_fn(
            flat.data_ptr(),
            flat.stride(0),
            packed.address,
            None if bias is None else bias.data_ptr(),
            out.data_ptr(),
            flat.shape[0],
            packed.out_features,
            packed.in_features,
            torch.get_num_threads(),
        )
        if status != 0:
            raise RuntimeError(f"the {self.name} matmul refused its shapes")
        return out

    def agrees(self) -> bool:
        """The build computes ``x @ w.T + b`` (to bf16's rounding of fp32 sums) here."""
        generator = torch.Generator().manual_seed(0)
        for n, k, rows in ((64, 96, 3), (96, 64, 21)):
            w = torch.randn((n, k), generator=generator).to(torch.bfloat16)
            x = torch.randn((rows, k), generator=generator).to(torch.bfloat16)
            b = torch.randn(n, generator=generator).to(torch.bfloat16)
            got = self.matmul(x, self.pack(w), b).double()
            want = x.double() @ w.double().T + b.double()
            if not torch.allclose(got, want, rtol=1e-2, atol=1e-2):
                log.warning("the %s matmul gives wrong products here: oneDNN's instead", self.name)
                return False
        return True


def declare(library: ctypes.CDLL, prefix: str) -> tuple[ctypes._CFuncPtr, ctypes._CFuncPtr]:
    """``newsdesk_<prefix>_pack`` and ``newsdesk_<prefix>_matmul`` of ``library``, typed."""
    pack = getattr(library, f"newsdesk_{prefix}_pack")
    pack.restype = None
    pack.argtypes = [ctypes.c_void_p, ctypes.c_long, ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
    matmul = getattr(library, f"newsdesk_{prefix}_matmul")
    matmul.restype = ctypes.c_int
    matmul.argtypes = [ctypes.c_void_p, ctypes.c_long] + [ctypes.c_void_p] * 3 + [ctypes.c_int] * 4
    return pack, matmul


def open_library(path: Path) -> ctypes.CDLL:
    library = ctypes.CDLL(str(path))
    library.newsdesk_bf16_ready.restype = ctypes.c_int
    library.newsdesk_bf16_ready.argtypes = []
    declare(library, "bf16")
    return library


@functools.cache
def load() -> StepMatmul | None:
    """The AVX512-BF16 kernel where this CPU has the instructions and it computes right here,
    else None (decode steps keep oneDNN)."""
    library = kernels.open_built(SOURCE, kernels.FLAGS, open_library, "oneDNN's matmuls instead")
    if library is None or not library.newsdesk_bf16_ready():
        return None
    # prompts too: 30 layers' matmuls at a prompt's 436 rows 96.2 against oneDNN's 104.5 ms,
    # at 640 139.2 against 150.6 (the Zen 5 of 2026-12-01, alternating)
    ops = StepMatmul("AVX512-BF16", *declare(library, "bf16"), (16, 2), serves_prompts=True)
    return ops if ops.agrees() else None
