"""bf16 rows times bf16 weights on AMX tiles (``amx_matmul.c``): a bf16 model's decode-step
matmuls on CPUs with AMX (``cpu.amx_matmul``).

oneDNN's AMX matmuls choose their blocking by the row count, so a row's bits move with the
rows beside it (measured on the AMX Xeon of 2026-12-01: a 42-row block alone and inside 672
rows differ). A decode row therefore stepped beside an idle one, and ratings could not share
a matmul. Here a row's sums are its own 16-row block's tile products over the inputs in order,
so its bits do not depend on the row count or the threads
(tests/serving/engine/cpu/test_step_matmuls.py). At a decode step's 1-16 rows that is what oneDNN's
AMX kernel computes too: the same bits (so summaries do not move), and on that machine all of a
step's matmuls out of cache took 10.1-11.1 ms at 2-16 rows against oneDNN's 12.4-15.1. Rating passes
(~42 rows each) run on it as well, so rows ending together share them. Weights are packed once at
load into AMX's tile layout: a second copy of the bf16 weights (prompts keep oneDNN's, faster at
hundreds of rows). What the engine's step kernels share (packing, the call, the check at load) is
:class:`serving.engine.cpu.kernels.bf16_matmul.StepMatmul`.
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

from serving.engine.cpu import kernels
from serving.engine.cpu.kernels import bf16_matmul

SOURCE = Path(__file__).with_name("amx_matmul.c")


def open_library(path: Path) -> ctypes.CDLL:
    library = ctypes.CDLL(str(path))
    library.newsdesk_amx_ready.restype = ctypes.c_int
    library.newsdesk_amx_ready.argtypes = []
    bf16_matmul.declare(library, "amx")
    return library


@functools.cache
def load() -> bf16_matmul.StepMatmul | None:
    """The kernel where this CPU and this process run AMX tiles and it computes right here,
    else None (decode steps keep oneDNN, or the AVX512-BF16 kernel)."""
    library = kernels.open_built(SOURCE, kernels.FLAGS, open_library, "oneDNN's matmuls instead")
    if library is None or not library.newsdesk_amx_ready():
        return None
    # decode steps and rating passes only: unblocked, it falls behind oneDNN's at a prompt's
    # hundreds of rows (7.8 against 4.2 ms at 1,744 rows on the AMX Xeon of 2026-12-01)
    ops = bf16_matmul.StepMatmul("AMX", *bf16_matmul.declare(library, "amx"), (32, 32))
    return ops if ops.agrees() else None
