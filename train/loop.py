"""The Ray Train worker loop: PEFT LoRA/QLoRA under DeepSpeed ZeRO-2.

It lives in an importable module because Ray pickles the loop by reference: a loop defined in
``__main__`` (the ``ray job`` entrypoint) cannot be unpickled by the workers.

Each worker: loads the base model (plain or 4-bit NF4), adds LoRA, wraps it in the
completion-only loss, hands it to ``deepspeed.initialize`` with ``configs/ds_config.json``
("auto" values filled from the run config) and a ``torch.optim.AdamW`` (DeepSpeed's own
optimizers compile C++ ops for minutes on first use), then trains its shard of the pairs.
Every epoch ends with an eval loss over the val pairs and a checkpoint reported through
``ray.train.report``: every rank's ZeRO shard (DeepSpeed ``save_checkpoint`` without the frozen
base weights), the adapter and the loop state. A restarted run resumes from the latest one.
"""

from __future__ import annotations

import copy
import json
import math
import os
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from train.config import TrainConfig

CKPT_TAG = "ckpt"
STATE_FILE = "trainer_state.json"


def worker_env(cfg: TrainConfig, state_dir: Path) -> dict[str, str]:
    """Environment of every training worker (set before DeepSpeed is imported)."""
    env = {
        # compiled DeepSpeed ops (if any) land under the state dir, built once per machine
        "TORCH_EXTENSIONS_DIR": str(Path(state_dir) / "torch_extensions"),
        "TOKENIZERS_PARALLELISM": "false",
    }
    if not cfg.use_gpu:
        env["DS_ACCELERATOR"] = "cpu"
    return env


def fill_ds_config(raw: dict[str, Any], cfg: TrainConfig, world_size: int, bf16: bool) -> dict:
    """``configs/ds_config.json`` with its "auto" values taken from the run config."""
    ds = copy.deepcopy(raw)

    def fill(section: dict[str, Any], key: str, value: Any) -> None:
        if section.get(key, "auto") == "auto":
            section[key] = value

    fill(ds, "train_micro_batch_size_per_gpu", cfg.micro_batch_size)
    fill(ds, "gradient_accumulation_steps", cfg.gradient_accumulation_steps)
    fill(
        ds,
        "train_batch_size",
        ds["train_micro_batch_size_per_gpu"] * ds["gradient_accumulation_steps"] * world_size,
    )
    fill(ds.setdefault("bf16", {}), "enabled", bf16)
    return ds


def _lr_lambda(total_steps: int, warmup_steps: int):  # type: ignore[no-untyped-def]
    def schedule(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        remaining = max(1, total_steps - warmup_steps)
        return max(0.0, 1.0 - (step - warmup_steps) / remaining)

    return schedule


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Entry point of each Ray Train worker. ``config``: ``train_config`` (a TrainConfig
    dict), ``model_dir``, ``state_dir``, ``max_prompt_tokens``, ``target_modules``, ``dtype``,
    ``train_file``, ``val_file``, ``prompt_version``."""
    cfg = TrainConfig.model_validate(config["train_config"])
    for key, value in worker_env(cfg, Path(config["state_dir"])).items():
        os.environ.setdefault(key, value)

    import deepspeed
    import deepspeed.ops
    import ray.train
    import torch
    import torch.distributed as dist
    from transformers import AutoTokenizer

    from train.data import collate, iter_eval_batches, load_examples, shard_batches
    from train.modeling import CompletionLoss, add_lora, load_base_model, write_adapter_meta

    torch.set_num_threads(cfg.threads_per_worker or max(1, int(cfg.cpus_per_worker)))
    torch.manual_seed(cfg.seed)
    if not cfg.use_gpu:
        # Measured here: fp32 LoRA steps slowed from ~2 s to 20-50 s once denormal floats
        # appeared in the activations/gradients (x86 handles them in microcode). Flushing
        # them to zero costs nothing in accuracy at these magnitudes.
        torch.set_flush_denormal(True)
        # DeepSpeed's CPU accelerator builds a shared-memory all-reduce op (C++, ~2 min on 2
        # cores) on first use; gloo's all-reduce of a LoRA's few MB of gradients costs
        # milliseconds, so the op is not worth its compile time here.
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    if cfg.use_gpu:
        import ray.train.torch as rt_torch

        device = rt_torch.get_device()
    else:
        device = torch.device("cpu")

    model_dir = Path(config["model_dir"])
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    limits = {
        "max_prompt_tokens": config["max_prompt_tokens"],
        "max_target_tokens": cfg.max_target_tokens,
    }
    train_examples, train_counts = load_examples(
        Path(config["train_file"]), tokenizer, limit=cfg.max_train_pairs, **limits
    )
    val_examples, val_counts = load_examples(
        Path(config["val_file"]), tokenizer, limit=cfg.max_val_pairs, **limits
    )
    if not train_examples:
        raise ValueError(f"no usable training pairs in {config['train_file']}: {train_counts}")

    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[
        config["dtype"]
    ]
    bf16 = cfg.use_gpu and (dtype == torch.bfloat16 or cfg.quantization == "nf4")
    model = load_base_model(
        model_dir,
        dtype=dtype if cfg.use_gpu else torch.float32,
        quantization=cfg.quantization,
        device=str(device),
    )
    if cfg.gradient_checkpointing and cfg.quantization == "none":
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    peft_model = add_lora(
        model,
        r=cfg.lora.r,
        alpha=cfg.lora.alpha,
        dropout=cfg.lora.dropout,
        targets=list(config["target_modules"]),
    )
    wrapped = CompletionLoss(peft_model)

    ds_raw = json.loads(Path(cfg.ds_config).read_text())
    ds_config = fill_ds_config(ds_raw, cfg, world, bf16)
    gas = ds_config["gradient_accumulation_steps"]
    mb = ds_config["train_micro_batch_size_per_gpu"]
    micro_per_epoch = (len(train_examples) // (world * mb)) // gas * gas
    if micro_per_epoch == 0:
        raise ValueError(
            f"{len(train_examples)} pairs cannot fill one optimizer step of "
            f"{world} workers x {mb} x {gas} accumulation"
        )
    steps_per_epoch = micro_per_epoch // gas
    total_steps = steps_per_epoch * cfg.epochs
    params = [p for p in wrapped.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _lr_lambda(total_steps, int(total_steps * cfg.warmup_ratio))
    )
    engine, _, _, _ = deepspeed.initialize(
        model=wrapped,
        optimizer=optimizer,
        lr_scheduler=scheduler,
        config=ds_config,
        dist_init_required=False,  # Ray Train has set up the process group
    )

    state: dict[str, Any] = {"epoch": 0, "micro_step": 0, "global_step": 0, "history": []}
    resumed_from: int | None = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as ckpt_dir:
            engine.load_checkpoint(
                str(Path(ckpt_dir) / "ds"), tag=CKPT_TAG, load_module_strict=False
            )
            state = json.loads((Path(ckpt_dir) / STATE_FILE).read_text())
        resumed_from = state["global_step"]

    data_counts = {
        "train": dict(train_counts),
        "val": dict(val_counts),
        "train_examples": len(train_examples),
        "val_examples": len(val_examples),
    }
    totals = Counter()  # this rank's throughput counters since (re)start

    def all_sum(values: list[float]) -> list[float]:
        tensor = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def evaluate() -> float | None:
        if not val_examples:
            return None
        engine.eval()
        loss_sum = tokens = 0.0
        with torch.no_grad():
            for batch in iter_eval_batches(
                val_examples, rank=rank, world_size=world, micro_batch_size=max(mb, 4)
            ):
                tensors = {k: v.to(device) for k, v in collate(batch, pad_id).items()}
                s, n = engine(**tensors)
                loss_sum += float(s)
                tokens += float(n)
        engine.train()
        loss_sum, tokens = all_sum([loss_sum, tokens])
        return loss_sum / max(tokens, 1.0)

    def report(metrics: dict[str, Any], with_adapter: bool) -> None:
        sums = all_sum(
            [totals["samples"], totals["tokens"], totals["target_tokens"], totals["train_s"]]
        )
        train_s = sums[3] / world  # every rank trains in parallel: mean wall time
        metrics.update(
            {
                "global_step": state["global_step"],
                "epoch": state["epoch"],
                "samples_per_s": sums[0] / train_s if train_s else 0.0,
                "tokens_per_s": sums[1] / train_s if train_s else 0.0,
                "target_tokens_per_s": sums[2] / train_s if train_s else 0.0,
                "train_seconds": train_s,
                "samples": sums[0],
                "tokens": sums[1],
                "resumed_from_step": resumed_from,
                "world_size": world,
                "data_counts": json.dumps(data_counts),
                "history": json.dumps(state["history"]),
            }
        )
        with tempfile.TemporaryDirectory(prefix="newsdesk-ckpt-") as tmp:
            engine.save_checkpoint(
                str(Path(tmp) / "ds"), tag=CKPT_TAG, exclude_frozen_parameters=True
            )
            if rank == 0:
                (Path(tmp) / STATE_FILE).write_text(json.dumps(state))
                if with_adapter:
                    adapter_dir = Path(tmp) / "adapter"
                    peft_model.save_pretrained(adapter_dir)
                    write_adapter_meta(
                        adapter_dir,
                        {
                            "run": cfg.name,
                            "profile": cfg.profile,
                            "prompt_version": config["prompt_version"],
                            "global_step": state["global_step"],
                            "quantization": cfg.quantization,
                        },
                    )
            ray.train.report(
                metrics,
                checkpoint=ray.train.Checkpoint.from_directory(tmp),
                checkpoint_dir_name=f"step-{state['global_step']:06d}-e{state['epoch']}",
            )

    engine.train()
    window_loss = window_tokens = 0.0
    while state["epoch"] < cfg.epochs:
        epoch = state["epoch"]
        batches = shard_batches(
            train_examples,
            rank=rank,
            world_size=world,
            micro_batch_size=mb,
            epoch=epoch,
            seed=cfg.seed,
        )[:micro_per_epoch]
        for batch in batches[state["micro_step"] :]:
            started = time.perf_counter()
            tensors = {k: v.to(device) for k, v in collate(batch, pad_id).items()}
            loss_sum, n_tokens = engine(**tensors)
            loss = loss_sum / n_tokens.clamp(min=1)
            engine.backward(loss)
            boundary = engine.is_gradient_accumulation_boundary()
            engine.step()
            totals["train_s"] += time.perf_counter() - started
            totals["samples"] += len(batch)
            totals["tokens"] += int(tensors["attention_mask"].sum())
            totals["target_tokens"] += int(n_tokens)
            window_loss += float(loss_sum.detach())
            window_tokens += float(n_tokens)
            state["micro_step"] += 1
            if not boundary:
                continue
            state["global_step"] += 1
            if rank == 0 and state["global_step"] % 5 == 0:
                rate = totals["tokens"] / max(totals["train_s"], 1e-9)
                print(
                    f"step {state['global_step']}/{total_steps} epoch {epoch} "
                    f"loss {window_loss / max(window_tokens, 1.0):.4f} "
                    f"{rate:.0f} tokens/s on rank 0",
                    flush=True,
                )
            if (
                cfg.fail_at_step is not None
                and resumed_from is None
                and state["global_step"] == cfg.fail_at_step
            ):
                raise RuntimeError(f"injected failure at step {cfg.fail_at_step} (fail_at_step)")
            if (
                cfg.checkpoint_every_steps
                and state["global_step"] % cfg.checkpoint_every_steps == 0
            ):
                if state["micro_step"] < len(batches):  # the epoch end reports anyway
                    loss_sum_all, tokens_all = all_sum([window_loss, window_tokens])
                    window_loss = window_tokens = 0.0
                    report({"train_loss": loss_sum_all / max(tokens_all, 1.0)}, False)
        loss_sum_all, tokens_all = all_sum([window_loss, window_tokens])
        window_loss = window_tokens = 0.0
        eval_loss = evaluate()
        state["history"].append(
            {
                "epoch": epoch,
                "global_step": state["global_step"],
                "train_loss": loss_sum_all / tokens_all if tokens_all else None,
                "eval_loss": eval_loss,
            }
        )
        state["epoch"] += 1
        state["micro_step"] = 0
        report(
            {
                "train_loss": state["history"][-1]["train_loss"],
                "eval_loss": eval_loss,
                "done": state["epoch"] >= cfg.epochs,
                "steps_per_epoch": steps_per_epoch,
            },
            True,
        )
    last = state["history"][-1] if state["history"] else {}
    if math.isnan(last.get("train_loss") or 0.0):
        raise FloatingPointError("training loss is NaN")
