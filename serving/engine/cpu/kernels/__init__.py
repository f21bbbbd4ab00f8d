"""The engine's own CPU kernels: attention over the slot KV cache (``attention.c``, whose
comments say what each computes and why it is batch-invariant): decode steps (one query per
row, :func:`decode_attention`) and one row's prefill or rating pass (:func:`prefill_attention`).
A step's adds, norms, rotary embeddings and cache writes
(:mod:`serving.engine.cpu.kernels.step_ops`), its matmuls on fp16 weights for fp32 models
(:mod:`serving.engine.cpu.kernels.fp16_weights`) and on AMX tiles for bf16 models
(:mod:`serving.engine.cpu.kernels.amx_matmul`) are the other C files here, built the same way
(:func:`build`).

PyTorch has no CPU attention that is both batch-invariant and fast here: its SDPA splits work
by batch size, two batched matmuls read an fp32 cache through small-M gemms at ~14 GB/s, and
its flash kernel runs a prompt at a fraction of the fp32 rate. Attention is the one piece of
arithmetic the engine writes by hand, the way vLLM's CPU build ships its own.

The kernels are C with no dependency, built on first use by the system's C compiler for this
CPU (``-march=native``; OpenMP from torch's own runtime, already loaded) into
``$XDG_CACHE_HOME/newsdesk/kernels``, keyed by the source, the compiler and the CPU's flags
(a shared home on a mixed cluster keeps one build per CPU kind), and called through ctypes
(which releases the GIL). The hot loops are written out for AVX-512 and for AVX2 + FMA (CPUs
without AVX-512), each giving the portable loops' bits (tested); the cache they read is the
model's own dtype, bf16 or fp32. A bf16 prompt's attention can run on AMX tiles or in
AVX512-BF16 dot products instead, where the CPU has them (``mode``: other bits, within a few
fp32 roundings; batch-invariant the same way).

Without a C compiler (or on a platform it does not build on) :func:`load` returns None and
the engine keeps PyTorch's path with an fp32 cache, logged once: slower, never wrong.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("attention.c")
# -mprefer-vector-width: GCC 12 tunes AVX-512 CPUs it does not know (Zen 4) for 128-bit vectors
FLAGS = (
    "-O3",
    "-march=native",
    "-mprefer-vector-width=512",
    "-fopenmp",
    "-fPIC",
    "-shared",
    "-std=gnu11",
)


# the KV caches the kernels read: a bf16 model's (exact in bf16) and an fp32 model's
CACHE_DTYPES = (torch.bfloat16, torch.float32)


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "newsdesk" / "kernels"


def _cpu_key() -> str:
    """The CPU's model and flags (``-march=native`` builds for exactly these)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or platform.machine()
    wanted = ("model name", "flags")
    return "|".join(next((x for x in lines if x.startswith(w)), "") for w in wanted)


def build(compiler: str, flags: tuple[str, ...] = FLAGS, source: Path = SOURCE) -> Path:
    """The shared library built from ``source`` (:data:`SOURCE`, or another of this package's
    C files) with ``flags`` (cached: built once)."""
    version = subprocess.run(
        [compiler, "--version"], capture_output=True, text=True, check=True
    ).stdout
    digest = hashlib.sha256(
        "\0".join([source.read_text(), compiler, version, " ".join(flags), _cpu_key()]).encode()
    ).hexdigest()[:16]
    target = _cache_dir() / f"{source.stem}-{digest}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # built beside its final name and renamed: replicas starting together never load half a file
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        built = Path(tmp) / target.name
        subprocess.run(
            [compiler, *flags, "-o", str(built), str(source)],
            capture_output=True,
            text=True,
            check=True,
        )
        os.replace(built, target)
    return target


def compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


def open_built(
    source: Path, flags: tuple[str, ...], opener: Callable[[Path], ctypes.CDLL], instead: str
) -> ctypes.CDLL | None:
    """``opener`` on the library built from another of this package's C files; None where
    there is no compiler (:func:`load` logs that) or the build fails (logged, with what runs
    ``instead``)."""
    cc = compiler()
    if cc is None or platform.system() != "Linux":
        return None
    try:
        return opener(build(cc, flags, source))
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", "") or exc
        log.warning("%s not built (%s): %s", source.name, detail, instead)
        return None


def open_library(path: Path) -> ctypes.CDLL:
    """Load a built library and declare its functions' C signatures."""
    library = ctypes.CDLL(str(path))
    fn = library.newsdesk_decode_attention
    fn.restype = ctypes.c_int
    fn.argtypes = (
        [ctypes.c_void_p] * 5 + [ctypes.c_int] * 5 + [ctypes.c_float, ctypes.c_int, ctypes.c_int]
    )
    fn = library.newsdesk_prefill_attention
    fn.restype = ctypes.c_int
    fn.argtypes = (
        [ctypes.c_void_p] * 3
        + [ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
        + [ctypes.c_int] * 5
        + [ctypes.c_float, ctypes.c_int, ctypes.c_int, ctypes.c_int]
    )
    for probe in (library.newsdesk_amx_attention, library.newsdesk_dpbf16_attention):
        probe.restype = ctypes.c_int
        probe.argtypes = []
    return library


@functools.cache
def load() -> ctypes.CDLL | None:
    """The compiled kernel library, or None (logged) where it cannot be built here."""
    if compiler() is None or platform.system() != "Linux":
        log.warning("no C compiler: attention stays on PyTorch's kernels (slower)")
        return None
    return open_built(SOURCE, FLAGS, open_library, "PyTorch's attention instead")


def available() -> bool:
    return load() is not None


# how prefill_attention computes a bf16 prompt's attention: the fp32 loops, or in bf16
# products on AMX tiles or in AVX512-BF16 dot products (attention.c says how)
PREFILL_LOOPS, PREFILL_AMX, PREFILL_DPBF16 = 0, 1, 2


def amx_available(library: ctypes.CDLL | None = None) -> bool:
    """Whether :func:`prefill_attention`'s ``PREFILL_AMX`` runs on AMX tiles here: the kernels
    built for a CPU with AMX (and AVX512-BF16), and Linux letting this process use the tiles."""
    library = library or load()
    return library is not None and bool(library.newsdesk_amx_attention())


def dpbf16_available(library: ctypes.CDLL | None = None) -> bool:
    """Whether :func:`prefill_attention`'s ``PREFILL_DPBF16`` runs in AVX512-BF16 dot products
    here (the kernels built for a CPU with AVX512-BF16)."""
    library = library or load()
    return library is not None and bool(library.newsdesk_dpbf16_attention())


def prefill_mode(amx: bool, dpbf16: bool) -> int:
    """The prefill mode a profile's options give on this CPU: AMX tiles with ``amx`` where
    they run, else AVX512-BF16 dot products with ``dpbf16`` where those run, else the loops."""
    if amx and amx_available():
        return PREFILL_AMX
    if dpbf16 and dpbf16_available():
        return PREFILL_DPBF16
    return PREFILL_LOOPS


def decode_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor,
    scale: float,
    library: ctypes.CDLL | None = None,
) -> torch.Tensor | None:
    """Attention of ``(n, H, 1, D)`` queries against ``(n, Hkv, L, D)`` keys and values (bf16
    or fp32, :data:`CACHE_DTYPES`) where ``mask`` (``(n, 1, 1, L)`` bool) is set;
    ``(n, 1, H, D)`` fp32. None when the kernel is not built or the shapes are not ones it
    handles (the caller then uses PyTorch).
    ``library``: another build of the kernels (tests), not the one :func:`load` gives."""
    library = library or load()
    rows, heads, _, dim = query.shape
    kv_heads, capacity = key.shape[1], key.shape[2]
    if (
        library is None
        or key.dtype not in CACHE_DTYPES
        or value.dtype != key.dtype
        or mask.dtype != torch.bool
        or mask.shape != (rows, 1, 1, capacity)
        or not (key.is_contiguous() and value.is_contiguous() and mask.is_contiguous())
        or key.device.type != "cpu"
    ):
        return None
    q = query.reshape(rows, heads, dim).float().contiguous()
    out = torch.empty((rows, heads, dim), dtype=torch.float32)
    status = library.newsdesk_decode_attention(
        q.data_ptr(),
        key.data_ptr(),
        value.data_ptr(),
        mask.data_ptr(),
        out.data_ptr(),
        rows,
        heads,
        kv_heads,
        capacity,
        dim,
        scale,
        torch.get_num_threads(),
        key.dtype == torch.bfloat16,
    )
    if status != 0:
        return None
    return out.unsqueeze(1)


def prefill_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor | None,
    scale: float,
    library: ctypes.CDLL | None = None,
    mode: int = PREFILL_LOOPS,
) -> torch.Tensor | None:
    """Attention of one row's ``(1, H, Lq, D)`` queries (a prompt, the rating pass) against its
    ``(1, Hkv, Lk, D)`` keys and values (bf16 or fp32; views of the slot cache: columns
    contiguous, heads strided), where ``mask`` (``(1, 1, Lq, Lk)`` bool) is set, or causal
    from the last key back when it is None; ``(1, Lq, H, D)`` fp32. None where the kernel does
    not apply. ``mode``: ``PREFILL_AMX`` on AMX tiles, ``PREFILL_DPBF16`` in AVX512-BF16 dot
    products, where they run (:func:`prefill_mode`; a bf16 cache, a head dimension that is a
    multiple of 64), else the loops: other bits than the fp32 loops, within a few fp32
    roundings (``attention.c`` says how), batch-invariant the same way."""
    library = library or load()
    batch, heads, q_len, dim = query.shape
    kv_heads, k_len = key.shape[1], key.shape[2]
    if (
        library is None
        or batch != 1
        or key.dtype not in CACHE_DTYPES
        or value.dtype != key.dtype
        or key.stride() != value.stride()
        or key.stride()[2:] != (dim, 1)
        or key.device.type != "cpu"
        or (mask is not None and (mask.dtype != torch.bool or mask.shape[-2:] != (q_len, k_len)))
    ):
        return None
    q = query.reshape(heads, q_len, dim).float().contiguous()
    rows = None if mask is None else mask.reshape(q_len, k_len).contiguous()
    out = torch.empty((q_len, heads, dim), dtype=torch.float32)
    status = library.newsdesk_prefill_attention(
        q.data_ptr(),
        key.data_ptr(),
        value.data_ptr(),
        key.stride(1),
        None if rows is None else rows.data_ptr(),
        out.data_ptr(),
        q_len,
        k_len,
        heads,
        kv_heads,
        dim,
        scale,
        torch.get_num_threads(),
        key.dtype == torch.bfloat16,
        mode,
    )
    if status != 0:
        return None
    return out.unsqueeze(0)
