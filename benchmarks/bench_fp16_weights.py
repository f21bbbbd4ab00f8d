"""A decode step's matmuls on an fp32 model: fp16 weights in our kernel against oneDNN's fp32.

    python benchmarks/bench_fp16_weights.py [--rows 1,2,8,16] [--repeats 5]

All of SmolLM2-135M's decode-step matmuls (30 layers' q/k/v, o, gate/up and down projections,
each layer's own weights, so they come from memory as in a real step, and the output layer) at
each row count, both ways in the same run, alternating which goes first: the engine's path with
``cpu.fp16_weights`` (``serving/engine/cpu/kernels/fp16_weights.c`` on fp16 panels) and without it
(oneDNN's matmul on fp32 weights packed once, ``serving/engine/cpu/packed_linear.py``). The figures
for the whole engine are ``bench_engine.py``'s (variant ``no-fp16-weights``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from serving.engine.cpu import packed_linear  # noqa: E402
from serving.engine.cpu.kernels import fp16_weights  # noqa: E402

# SmolLM2-135M: (out, in) of a layer's q/k/v (one packed group), o, gate/up, down; the output layer
LAYER = [(960, 576), (576, 576), (3072, 576), (576, 1536)]
LAYERS = 30
OUTPUT = (49152, 576)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="1,2,8,16")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    kernel = fp16_weights.load()
    if kernel is None or not packed_linear.available():
        sys.exit("the fp16-weight kernel or oneDNN is not available here")
    torch.manual_seed(0)
    shapes = LAYER * LAYERS + [OUTPUT]
    weights = [(torch.randn(shape) * 0.05).half().float() for shape in shapes]
    panels = [kernel.pack(w) for w in weights]
    packed = [packed_linear._pack(w) for w in weights]
    print(f"# a decode step's matmuls: {len(shapes)} weights, {LAYERS} layers and the output layer")
    print(f"# {torch.get_num_threads()} threads, torch {torch.__version__}")
    print("\n| rows | fp16 weights, our kernel (ms) | fp32 weights, oneDNN (ms) | speed-up |")
    print("|---:|---:|---:|---:|")
    for rows in (int(r) for r in args.rows.split(",")):
        inputs = {k: torch.randn(rows, k) for k in {s[1] for s in shapes}}

        def ours(inputs: dict = inputs) -> None:
            for w, p in zip(weights, panels, strict=True):
                kernel.matmul(inputs[w.shape[1]], p)

        def onednn(inputs: dict = inputs) -> None:
            for w, p in zip(weights, packed, strict=True):
                packed_linear._matmul(inputs[w.shape[1]], p, None)

        ways = {"kernel": ours, "onednn": onednn}
        best = {name: float("inf") for name in ways}
        for turn in range(args.repeats):
            order = list(ways) if turn % 2 == 0 else list(reversed(ways))
            for name in order:
                started = time.perf_counter()
                ways[name]()
                best[name] = min(best[name], time.perf_counter() - started)
        mine, theirs = best["kernel"] * 1e3, best["onednn"] * 1e3
        print(f"| {rows} | {mine:.1f} | {theirs:.1f} | **{theirs / mine:.2f}x** |")


if __name__ == "__main__":
    main()
