"""vLLM's CPU build as :mod:`benchmarks.bench_engine`'s same-run yardstick (the runtime Ray
Serve LLM runs, and the one issue 14's targets name).

Like :mod:`benchmarks.anchors.openvino_anchor`: the runtime lives in a virtualenv of its own
(``setup_vllm.sh``), and :mod:`vllm_cpu_run` runs there on the engine's prompt ids and model
folder. (Not named ``vllm.py``: the runner's folder is first on its ``sys.path``.)
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

from benchmarks.anchors.openvino_anchor import ANCHORS_DIR, AnchorRun

HERE = Path(__file__).resolve().parent
SETUP = HERE / "setup_vllm.sh"


def _tcmalloc() -> str | None:
    for folder in ("/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/lib"):
        path = Path(folder) / "libtcmalloc_minimal.so.4"
        if path.exists():
            return str(path)
    return None


class VllmAnchor:
    label = "vLLM CPU 0.32 (bf16)"
    short = "vLLM"

    def __init__(self, root: Path = ANCHORS_DIR) -> None:
        self.python = root / "vllm" / "bin" / "python"

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
        with tempfile.NamedTemporaryFile("w", suffix=".json") as f:
            json.dump(prompts, f)
            f.flush()
            done = subprocess.run(
                [
                    str(self.python), str(HERE / "vllm_cpu_run.py"), str(model_dir), f.name,
                    "--batch-sizes", ",".join(str(b) for b in batch_sizes),
                    "--new-tokens", str(new_tokens),
                    "--repeats", str(repeats),
                    "--threads", str(threads),
                ],
                capture_output=True, text=True, env=env,
            )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"vLLM anchor failed: {done.stderr[-2000:]}")
        # vLLM logs to stdout too, also after the result (its shutdown)
        line = next(x for x in reversed(done.stdout.splitlines()) if x.startswith('{"aps"'))
        data = json.loads(line)
        return AnchorRun(
            label=self.label,
            aps={int(b): float(v) for b, v in data["aps"].items()},
            tokens_first=data.get("tokens_first", []),
        )

    def _iomp(self) -> str | None:
        found = sorted(self.python.parent.parent.glob("lib/python3*/site-packages/**/libiomp5.so"))
        return str(found[0]) if found else None
