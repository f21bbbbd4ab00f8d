"""Runs inside the vLLM CPU virtualenv (benchmarks/anchors/setup_vllm.sh), never in the
project's: imports nothing of Newsdesk.

    python vllm_cpu_run.py MODEL_DIR PROMPTS.json --batch-sizes 1,8,16 --new-tokens 64

Reads token ids (a JSON list of equal-length lists: the engine's own prompt ids), decodes
``new-tokens`` greedy tokens (``--dtype``, bf16 by default; eos ignored, as the engine is
forced on its side) for the first b prompts at each batch size with ``max_num_seqs`` = b, best
of ``repeats`` after one warm-up, and prints one JSON object as its last line: articles/s per
batch size and the first prompt's tokens at batch 1. The engine's model folder is a plain
transformers folder, so vLLM loads it as it is.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from anchor_timing import time_batches  # this folder: first on the runner's sys.path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model", type=Path)
    parser.add_argument("prompts", type=Path)
    parser.add_argument("--batch-sizes", default="1,8,16")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    args = parser.parse_args()
    # vLLM's CPU settings (its docs): threads bound to the cores, a KV cache of its own size
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"0-{args.threads - 1}")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "4")

    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    prompts = json.loads(args.prompts.read_text())
    sizes = [int(x) for x in args.batch_sizes.split(",") if x]
    llm = LLM(
        model=str(args.model),
        dtype=args.dtype,
        max_model_len=1024,
        max_num_seqs=max(sizes),
        enable_prefix_caching=False,  # every prompt once, as the engine sees it
    )
    params = SamplingParams(
        max_tokens=args.new_tokens, min_tokens=args.new_tokens, ignore_eos=True, temperature=0
    )

    def generate(batch: list[list[int]]):  # type: ignore[no-untyped-def]
        return llm.generate(
            [TokensPrompt(prompt_token_ids=ids) for ids in batch], params, use_tqdm=False
        )

    out = time_batches(
        generate, lambda result: result[0].outputs[0].token_ids, prompts, sizes, args.repeats
    )
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
