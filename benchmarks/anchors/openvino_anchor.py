"""OpenVINO GenAI as :mod:`benchmarks.bench_engine`'s same-run yardstick.

The runtime lives in a virtualenv of its own (``setup_openvino.sh``), never in the project's:
this module finds it, exports the engine's own model folder to OpenVINO IR once (cached by
folder and weight format), and runs :mod:`openvino_genai_run` there on the engine's prompt ids,
so both sides decode the same tokens from the same prompts on the same threads. (Not named
``openvino.py``: the runner's folder is first on its ``sys.path``, and ``import openvino``
there would find this module instead of the runtime.)
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ANCHORS_DIR = Path(os.environ.get("NEWSDESK_ANCHORS_DIR", Path.home() / ".cache/newsdesk-anchors"))
SETUP = HERE / "setup_openvino.sh"
RUNNER = HERE / "openvino_genai_run.py"


@dataclass
class AnchorRun:
    label: str
    aps: dict[int, float]  # articles/s by batch size
    tokens_first: list[int]  # the first prompt's tokens at batch 1

    @classmethod
    def of(cls, label: str, data: dict) -> AnchorRun:
        """From a runner's JSON (``anchor_timing.time_batches``)."""
        return cls(
            label=label,
            aps={int(b): float(v) for b, v in data["aps"].items()},
            tokens_first=data.get("tokens_first", []),
        )


class OpenVinoAnchor:
    """``precision``: its compute type, the engine's (bf16 on CPUs with native bf16, else fp32:
    both runtimes emulate bf16 without it, several times slower)."""

    def __init__(
        self, root: Path = ANCHORS_DIR, weights: str = "fp16", precision: str = "bf16"
    ) -> None:
        self.python = root / "openvino" / "bin" / "python"
        self.ir_root = root / "ir"
        self.weights = weights
        self.precision = precision
        self.label = f"OpenVINO GenAI 2026.4 ({weights} weights, {precision})"
        self.short = "OpenVINO"

    def available(self) -> bool:
        return self.python.exists()

    def ir_for(self, model_dir: Path) -> Path:
        """The model folder exported to OpenVINO IR (once; minutes on 2 cores)."""
        out = self.ir_root / f"{model_dir.name}-{self.weights}"
        if not (out / "openvino_model.xml").exists():
            self._call("export", str(model_dir), str(out), "--weights", self.weights)
        return out

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
        ir = self.ir_for(model_dir)
        data = call_runner(
            self.python, RUNNER, "run", str(ir), prompts=prompts,
            options=[
                *timing_options(batch_sizes, new_tokens, repeats, threads),
                "--precision", self.precision,
            ],
        )  # fmt: skip
        return AnchorRun.of(self.label, data)

    def _call(self, *args: str) -> str:
        return call_runner_text(self.python, RUNNER, *args)


def timing_options(
    batch_sizes: list[int], new_tokens: int, repeats: int, threads: int
) -> list[str]:
    """The options both runners take (``anchor_timing``'s inputs)."""
    return [
        "--batch-sizes", ",".join(str(b) for b in batch_sizes),
        "--new-tokens", str(new_tokens),
        "--repeats", str(repeats),
        "--threads", str(threads),
    ]  # fmt: skip


def call_runner_text(
    python: Path, script: Path, *args: str, env: dict[str, str] | None = None
) -> str:
    """``python script args`` in the anchor's virtualenv; its stdout."""
    done = subprocess.run(
        [str(python), str(script), *args], capture_output=True, text=True, env=env
    )
    if done.returncode != 0:
        raise RuntimeError(f"{script.name} failed: {done.stderr[-2000:]}")
    return done.stdout


def call_runner(
    python: Path,
    script: Path,
    *args: str,
    prompts: list[list[int]],
    options: list[str],
    env: dict[str, str] | None = None,
) -> dict:
    """A runner's ``run``: ``prompts`` handed over in a JSON file; its result is the line of
    stdout that starts ``{"aps"`` (a runtime may log to stdout too, even after it)."""
    with tempfile.NamedTemporaryFile("w", suffix=".json") as f:
        json.dump(prompts, f)
        f.flush()
        out = call_runner_text(python, script, *args, f.name, *options, env=env)
    line = next(x for x in reversed(out.splitlines()) if x.startswith('{"aps"'))
    return json.loads(line)
