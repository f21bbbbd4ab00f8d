"""Runs inside the OpenVINO GenAI virtualenv (benchmarks/anchors/setup_openvino.sh), never in
the project's: imports nothing of Newsdesk.

    python openvino_genai_run.py export SRC_HF_DIR OUT_IR_DIR [--weights fp16]
    python openvino_genai_run.py run IR_DIR PROMPTS.json --batch-sizes 1,8,16 --new-tokens 64

``run`` reads token ids (a JSON list of equal-length lists: the engine's own prompt ids),
decodes ``new-tokens`` greedy tokens for the first b prompts at each batch size (eos ignored,
as the engine is forced on its side), best of ``repeats`` after one warm-up, and prints one
JSON object: articles/s per batch size and the first prompt's tokens at batch 1.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from anchor_timing import time_batches  # this folder: first on the runner's sys.path


def export(src: Path, out: Path, weights: str) -> None:
    cli = Path(sys.executable).with_name("optimum-cli")
    subprocess.run(
        [
            str(cli),
            "export",
            "openvino",
            "--model",
            str(src),
            "--task",
            "text-generation-with-past",
            "--weight-format",
            weights,
            str(out),
        ],
        check=True,
    )


def run(args: argparse.Namespace) -> None:
    import numpy as np
    import openvino as ov
    import openvino_genai as genai

    prompts = json.loads(Path(args.prompts).read_text())
    # Every prompt computed once, as the engine sees it (vLLM's runner: the same). The
    # pipeline's default keeps every prompt's KV blocks for later calls, so the timed runs
    # re-used the warm-up's and the smaller batches' prompts: measured 2026-12-01, a repeated
    # 512-token prompt took 0.03 s against 0.34 s, so batch 1 timed a decode alone and batch
    # 16 half its prompts (OpenVINO figures before that date are inflated by it).
    scheduler = genai.SchedulerConfig()
    scheduler.enable_prefix_caching = False
    pipe = genai.LLMPipeline(
        str(args.ir),
        "CPU",
        scheduler_config=scheduler,
        INFERENCE_NUM_THREADS=args.threads,
        INFERENCE_PRECISION_HINT=args.precision,
    )
    config = genai.GenerationConfig(
        max_new_tokens=args.new_tokens,
        min_new_tokens=args.new_tokens,
        ignore_eos=True,
        do_sample=False,
    )

    def generate(batch: list[list[int]]):  # type: ignore[no-untyped-def]
        ids = np.asarray(batch, dtype=np.int64)
        inputs = genai.TokenizedInputs(ov.Tensor(ids), ov.Tensor(np.ones_like(ids)))
        return pipe.generate(inputs, config)

    sizes = [int(x) for x in args.batch_sizes.split(",") if x]
    out = time_batches(generate, lambda result: result.tokens[0], prompts, sizes, args.repeats)
    print(json.dumps(out))


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("export")
    ex.add_argument("src", type=Path)
    ex.add_argument("out", type=Path)
    ex.add_argument("--weights", default="fp16")
    rn = sub.add_parser("run")
    rn.add_argument("ir", type=Path)
    rn.add_argument("prompts", type=Path)
    rn.add_argument("--batch-sizes", default="1,8,16")
    rn.add_argument("--new-tokens", type=int, default=64)
    rn.add_argument("--repeats", type=int, default=1)
    rn.add_argument("--threads", type=int, default=2)
    rn.add_argument("--precision", default="bf16")
    args = parser.parse_args()
    if args.command == "export":
        export(args.src, args.out, args.weights)
    else:
        run(args)


if __name__ == "__main__":
    main()
