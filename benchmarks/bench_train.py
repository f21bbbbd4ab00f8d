"""Training throughput: Ray Train + DeepSpeed ZeRO-2 (2 CPU workers) vs a plain PEFT loop.

    python benchmarks/bench_train.py                 # 64 lead pairs of real ABC articles
    python benchmarks/bench_train.py --samples 32 --max-prompt-tokens 256

Same model (the default SmolLM2-135M, fp32), same LoRA (r=16, the profile's modules), same
pairs, same global batch (4 pairs per optimizer step), same completion-only loss, measured in
the same run:

- ``plain``: one process, ``torch.set_num_threads(2)``, PEFT + ``torch.optim.AdamW``, gradient
  accumulation 4 (the baseline the issue names);
- ``plain, full logits``: the same loop with transformers' own loss (logits at every position,
  the 49K-vocabulary output layer over the prompt too), on fewer samples: what slicing saves;
- ``ray+zero2``: ``TorchTrainer`` with 2 workers x 1 CPU, DeepSpeed ZeRO-2 over gloo, micro-batch
  1 x accumulation 2 per worker (= 4 pairs per step), via :func:`train.train_finetune.fit`.

Samples/s and tokens/s count the training steps only (forward, backward, optimizer; from the
loop's own timers); the end-to-end wall time beside them includes Ray start-up, process-group
and DeepSpeed set-up, model loading, eval and checkpoints.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from cluster.settings import Settings
from core.article import Article


def make_pairs(state_dir: Path, out: Path, n: int) -> Path:
    from train.corpus import lee_articles
    from train.generate_training_data import generate
    from train.teachers import LeadTeacher

    texts = lee_articles(state_dir, n + 16)
    articles = [
        Article(id=i + 1, title=" ".join(t.split()[:8]), text=t, source="ABC")
        for i, t in enumerate(texts)
    ]
    asyncio.run(generate(articles, LeadTeacher(), out, val_fraction=0.1, progress=False))
    return out


def plain_loop(
    model_dir: Path,
    examples: list,
    targets: list[str],
    *,
    gas: int,
    threads: int,
    full_logits: bool = False,
) -> dict[str, float]:
    from transformers import AutoModelForCausalLM

    from train.data import collate
    from train.modeling import CompletionLoss, add_lora

    torch.set_num_threads(threads)
    torch.set_flush_denormal(True)  # as the training loop does (denormals: 10-25x slower steps)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    peft_model = add_lora(model, r=16, alpha=32, dropout=0.05, targets=targets)
    peft_model.train()
    wrapped = CompletionLoss(peft_model)
    params = [p for p in wrapped.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=3e-4)
    samples = tokens = 0
    train_s = 0.0
    for step, example in enumerate(examples):
        started = time.perf_counter()
        batch = collate([example], 0)
        if full_logits:
            loss = peft_model(**batch).loss
        else:
            loss_sum, n = wrapped(**batch)
            loss = loss_sum / n
        (loss / gas).backward()
        if (step + 1) % gas == 0:
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            optimizer.zero_grad()
        train_s += time.perf_counter() - started
        samples += 1
        tokens += int(batch["attention_mask"].sum())
    return {
        "samples_per_s": samples / train_s,
        "tokens_per_s": tokens / train_s,
        "samples": samples,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--full-logits-samples", type=int, default=16)
    parser.add_argument("--max-prompt-tokens", type=int, default=256)
    parser.add_argument("--state-dir", type=Path, help="default: NEWSDESK_STATE_DIR")
    args = parser.parse_args()

    from transformers import AutoTokenizer

    from serving.engine.model_source import prepare_model
    from serving.model.profiles import load_profile
    from train.config import TrainConfig
    from train.data import load_examples

    base_settings = Settings(**({"state_dir": args.state_dir} if args.state_dir else {}))
    state_dir = base_settings.resolved_state_dir()
    profile = load_profile("cpu-small")
    model_dir = prepare_model(profile, base_settings)
    tmp = Path(tempfile.mkdtemp(prefix="bench-train-"))
    pairs = make_pairs(state_dir, tmp / "pairs", args.samples)
    tok = AutoTokenizer.from_pretrained(model_dir)
    examples, _ = load_examples(
        pairs / "train.jsonl",
        tok,
        max_prompt_tokens=args.max_prompt_tokens,
        max_target_tokens=128,
        limit=args.samples,
    )
    examples = examples[: len(examples) // 4 * 4]
    print(
        f"{len(examples)} pairs, {sum(len(e) for e in examples) / len(examples):.0f} tokens "
        f"each on average; load {os.getloadavg()[0]:.1f}",
        file=sys.stderr,
    )

    plain = plain_loop(model_dir, examples, profile.lora_target_modules, gas=4, threads=2)
    print(f"plain: {plain}", file=sys.stderr)
    full = plain_loop(
        model_dir,
        examples[: args.full_logits_samples],
        profile.lora_target_modules,
        gas=4,
        threads=2,
        full_logits=True,
    )
    print(f"plain full logits: {full}", file=sys.stderr)

    import ray

    from train.train_finetune import fit

    settings = Settings(state_dir=state_dir, training_dir=tmp / "training")
    cfg = TrainConfig(
        name="bench-zero2",
        data_dir=pairs,
        num_workers=2,
        cpus_per_worker=1,
        epochs=1,
        micro_batch_size=1,
        gradient_accumulation_steps=2,
        max_prompt_tokens=args.max_prompt_tokens,
        max_train_pairs=len(examples),
        max_val_pairs=2,
        rouge_pairs=0,
    )
    started = time.perf_counter()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    result = fit(
        cfg,
        settings,
        model_dir=model_dir,
        train_file=pairs / "train.jsonl",
        val_file=pairs / "val.jsonl",
        max_prompt_tokens=args.max_prompt_tokens,
        target_modules=profile.lora_target_modules,
        dtype="float32",
    )
    wall = time.perf_counter() - started
    ray.shutdown()
    m = result.metrics
    rows = [
        ("plain PEFT, 1 process x 2 threads", plain["samples_per_s"], plain["tokens_per_s"]),
        ("plain PEFT, full logits (HF loss)", full["samples_per_s"], full["tokens_per_s"]),
        ("Ray Train + ZeRO-2, 2 workers x 1", m["samples_per_s"], m["tokens_per_s"]),
    ]
    print(f"\n{'loop':<36} {'samples/s':>10} {'tokens/s':>9} {'vs plain':>9}")
    for name, sps, tps in rows:
        print(f"{name:<36} {sps:>10.3f} {tps:>9.1f} {sps / plain['samples_per_s']:>8.2f}x")
    in_loop = m["train_seconds"]
    print(
        f"\nray+zero2 end to end: {wall:.0f} s wall for {m['samples']:.0f} samples, of which "
        f"{in_loop:.0f} s in training steps; the other {wall - in_loop:.0f} s: Ray start, "
        f"worker processes, gloo process group, model load, deepspeed.initialize, eval, "
        f"checkpoints. Load average at the end: {os.getloadavg()[0]:.1f}"
    )
    print(
        json.dumps(
            {
                "plain": plain,
                "full_logits": full,
                "ray_zero2": {
                    k: m[k] for k in ("samples_per_s", "tokens_per_s", "train_seconds", "samples")
                },
                "ray_wall_s": wall,
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
