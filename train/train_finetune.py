"""Fine-tune the summarizer: ``python -m train.train_finetune --config CONFIG.yaml``.

Submitted as a Ray job (``ray job submit --working-dir . -- python -m train.train_finetune
...``) or run directly (a local Ray is started). The driver:

1. converts/locates the profile's base model once
   (:func:`serving.engine.model_source.prepare_model`),
2. records the run in the registry (``training_runs``, status running),
3. runs :func:`train.loop.train_loop_per_worker` under ``ray.train.torch.TorchTrainer`` with
   ``ScalingConfig(num_workers, use_gpu)`` from the config; the Ray Train run is named after the
   config's ``name``, so re-submitting it resumes from its latest checkpoint,
4. copies the final adapter to ``TRAINING_DIR/runs/<name>/adapter`` (optionally merged into a
   bf16 base), measures ROUGE-L of base and adapter on the val pairs with the engine, and
5. finishes the registry row with config, data, metrics and the run report.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import os
import shutil
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import asyncpg

from core import db
from train import registry
from train.config import TrainConfig, load_train_config
from train.generate_training_data import training_dir
from train.pairs import iter_jsonl
from train.settings import TrainSettings

log = logging.getLogger(__name__)


def describe_data(train_file: Path, val_file: Path) -> dict[str, Any]:
    """What a run trained on: files, their hashes, line counts, teachers, prompt versions."""
    info: dict[str, Any] = {}
    for split, path in (("train", train_file), ("val", val_file)):
        if not path.is_file():
            info[split] = {"path": str(path), "exists": False}
            continue
        teachers: Counter[str] = Counter()
        prompts: Counter[str] = Counter()
        lines = invalid = 0
        for _, record, error in iter_jsonl(path):
            lines += 1
            if error or record is None:
                invalid += 1
                continue
            teacher = record.get("teacher") or {}
            teachers[str(teacher.get("name") if isinstance(teacher, dict) else teacher)] += 1
            prompts[str(record.get("prompt_version"))] += 1
        info[split] = {
            "path": str(path),
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            "lines": lines,
            "invalid_lines": invalid,
            "teachers": dict(teachers),
            "prompt_versions": dict(prompts),
        }
    return info


async def _registry(settings: TrainSettings, fn, *args, **kwargs):  # type: ignore[no-untyped-def]
    conn = await asyncpg.connect(await db.resolve_database_url(settings))
    try:
        await db.migrate(conn)
        return await fn(conn, *args, **kwargs)
    finally:
        await conn.close()


def fit(
    cfg: TrainConfig,
    settings: TrainSettings,
    *,
    model_dir: Path,
    train_file: Path,
    val_file: Path,
    max_prompt_tokens: int,
    target_modules: list[str],
    dtype: str,
) -> Any:
    """Run the Ray Train job; returns the ``ray.train.Result``."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from serving.model.prompt import PROMPT_VERSION
    from train.loop import train_loop_per_worker, worker_env

    state_dir = settings.resolved_state_dir()
    if not ray.is_initialized():
        # A job's driver finds its cluster in RAY_ADDRESS (set by `ray job submit`). Otherwise
        # "local" starts a fresh Ray: a bare ray.init() would instead join whatever head
        # `ray start` last recorded on this machine, even a dead one.
        address = settings.ray_address or os.environ.get("RAY_ADDRESS") or "local"
        ray.init(address=address, log_to_driver=True)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "train_config": cfg.model_dump(mode="json"),
            "model_dir": str(model_dir),
            "state_dir": str(state_dir),
            "train_file": str(train_file),
            "val_file": str(val_file),
            "max_prompt_tokens": max_prompt_tokens,
            "target_modules": target_modules,
            "dtype": dtype,
            "prompt_version": PROMPT_VERSION,
        },
        torch_config=TorchConfig(backend="nccl" if cfg.use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=cfg.num_workers,
            use_gpu=cfg.use_gpu,
            resources_per_worker={
                "CPU": cfg.cpus_per_worker,
                **({"GPU": 1} if cfg.use_gpu else {}),
            },
        ),
        run_config=RunConfig(
            name=cfg.name,
            storage_path=str(training_dir(settings) / "ray"),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            worker_runtime_env={"env_vars": worker_env(cfg, state_dir)},
        ),
    )
    return trainer.fit()


def _install_adapter(result: Any, dest: Path) -> Path:
    """Copy the adapter of the run's latest checkpoint to ``dest`` (replaced atomically)."""
    if result.checkpoint is None:
        raise RuntimeError("the training run reported no checkpoint")
    with result.checkpoint.as_directory() as ckpt:
        source = Path(ckpt) / "adapter"
        if not (source / "adapter_config.json").is_file():
            raise RuntimeError(f"the latest checkpoint has no adapter ({ckpt})")
        tmp = dest.with_name(dest.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(source, tmp)
    old = dest.with_name(dest.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if dest.exists():
        dest.rename(old)
    tmp.rename(dest)
    shutil.rmtree(old, ignore_errors=True)
    return dest


def run_training(
    cfg: TrainConfig, settings: TrainSettings, *, register: bool = True, evaluate: bool = True
) -> dict[str, Any]:
    """Train, evaluate and register one run; returns the summary (also stored)."""
    from serving.engine.model_source import prepare_model
    from serving.model.profiles import load_profile, resolve_dtype
    from serving.model.prompt import PROMPT_VERSION

    started = time.monotonic()
    profile = load_profile(cfg.profile)
    model_dir = prepare_model(profile, settings)
    tdir = training_dir(settings)
    data_dir = Path(cfg.data_dir) if cfg.data_dir else tdir / "pairs"
    train_file, val_file = data_dir / "train.jsonl", data_dir / "val.jsonl"
    if not train_file.is_file():
        raise FileNotFoundError(
            f"no training pairs at {train_file}: run python -m train.generate_training_data"
        )
    data_info = describe_data(train_file, val_file)
    run_dir = tdir / "runs" / cfg.name
    run_dir.mkdir(parents=True, exist_ok=True)
    max_prompt_tokens = cfg.max_prompt_tokens or profile.max_prompt_tokens
    target_modules = cfg.lora.target_modules or profile.lora_target_modules
    config_record = {
        **cfg.model_dump(mode="json"),
        "ds_config_content": json.loads(Path(cfg.ds_config).read_text()),
        "base_model": str(model_dir),
        "max_prompt_tokens_used": max_prompt_tokens,
        "target_modules_used": target_modules,
    }
    run_id = None
    if register:
        run_id = asyncio.run(
            _registry(
                settings,
                registry.start_run,
                name=cfg.name,
                profile=profile.name,
                config=config_record,
                data=data_info,
                prompt_version=PROMPT_VERSION,
            )
        )
    try:
        result = fit(
            cfg,
            settings,
            model_dir=model_dir,
            train_file=train_file,
            val_file=val_file,
            max_prompt_tokens=max_prompt_tokens,
            target_modules=target_modules,
            dtype=resolve_dtype(profile.dtype, "cuda" if cfg.use_gpu else "cpu"),
        )
        train_seconds = time.monotonic() - started
        adapter_dir = _install_adapter(result, run_dir / "adapter")
        final = dict(result.metrics or {})
        history = json.loads(final.pop("history", "[]") or "[]")
        data_counts = json.loads(final.pop("data_counts", "{}") or "{}")
        metrics: dict[str, Any] = {
            "eval_loss": history[-1]["eval_loss"] if history else final.get("eval_loss"),
            "train_loss": history[-1]["train_loss"] if history else final.get("train_loss"),
            "history": history,
            "global_step": final.get("global_step"),
            "samples_per_s": final.get("samples_per_s"),
            "tokens_per_s": final.get("tokens_per_s"),
            "resumed_from_step": final.get("resumed_from_step"),
        }
        if evaluate and cfg.rouge_pairs:
            from train.evaluate import rouge_on_pairs

            try:
                rouge = rouge_on_pairs(
                    profile, settings, val_file, adapter_dir=adapter_dir, limit=cfg.rouge_pairs
                )
                metrics.update(rouge)
            except Exception as exc:  # the adapter is trained: keep it, say why ROUGE is missing
                log.exception("ROUGE-L evaluation failed")
                metrics["rouge_error"] = f"{type(exc).__name__}: {exc}"[:500]
        merged_dir = None
        if cfg.merge:
            from train.modeling import merge_adapter

            merged_dir = merge_adapter(model_dir, adapter_dir, run_dir / "merged-bf16")
        report = {
            "data_counts": data_counts,
            "seconds_total": round(time.monotonic() - started, 1),
            "seconds_training": round(train_seconds, 1),
            "train_seconds_in_loop": final.get("train_seconds"),
            "world_size": final.get("world_size"),
        }
        summary = {
            "run_id": run_id,
            "name": cfg.name,
            "adapter": str(adapter_dir),
            "merged": str(merged_dir) if merged_dir else None,
            "metrics": metrics,
            "report": report,
        }
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
        if register and run_id is not None:
            asyncio.run(
                _registry(
                    settings,
                    registry.finish_run,
                    run_id,
                    metrics=metrics,
                    report=report,
                    adapter_path=adapter_dir,
                    merged_path=merged_dir,
                )
            )
        return summary
    except BaseException as exc:
        if register and run_id is not None:
            asyncio.run(
                _registry(settings, registry.fail_run, run_id, f"{type(exc).__name__}: {exc}")
            )
        raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m train.train_finetune", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--config", required=True, help="configs/train/<name>.yaml or a name")
    parser.add_argument("--name", help="override the run name (a new name = a new run)")
    parser.add_argument("--data-dir", type=Path, help="override: folder of train/val.jsonl")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--num-workers", type=int)
    parser.add_argument("--no-eval", action="store_true", help="skip the ROUGE-L evaluation")
    parser.add_argument("--no-register", action="store_true", help="do not record the run")
    parser.add_argument("--promote", action="store_true", help="promote the adapter when done")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    settings = TrainSettings()
    cfg = load_train_config(
        args.config,
        name=args.name,
        data_dir=args.data_dir,
        epochs=args.epochs,
        num_workers=args.num_workers,
    )
    summary = run_training(cfg, settings, register=not args.no_register, evaluate=not args.no_eval)
    if args.promote and summary["run_id"] is not None:
        promotion = asyncio.run(_registry(settings, registry.promote, summary["run_id"]))
        summary["promoted"] = promotion.adapter_id
    print(json.dumps(summary, indent=2, default=str))
    print(f"adapter: {summary['adapter']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
