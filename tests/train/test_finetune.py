"""Fine-tuning for real: Ray Train with 2 CPU workers, DeepSpeed ZeRO-2 over gloo, PEFT LoRA on
the default model; a worker failure mid-run resumes from the latest checkpoint; the adapter is
recorded in the registry and changes what the engine answers. Plus the completion-only loss."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest
import torch

from cluster.settings import Settings
from core.article import Article
from train import registry
from train.config import TrainConfig, load_train_config
from train.data import IGNORE_INDEX, collate, load_examples
from train.generate_training_data import generate
from train.loop import fill_ds_config
from train.modeling import CompletionLoss, add_lora, check_target_modules, refuse_quantized
from train.teachers import LeadTeacher


@pytest.fixture(scope="module")
def lee_pairs(shared_state_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Lead pairs over 40 real ABC articles (train ~30, val ~10)."""
    from train.corpus import lee_articles

    texts = lee_articles(shared_state_dir, 40)
    articles = [
        Article(id=i + 1, title=" ".join(t.split()[:8]), text=t, source="ABC")
        for i, t in enumerate(texts)
    ]
    out = tmp_path_factory.mktemp("pairs")
    asyncio.run(generate(articles, LeadTeacher(), out, val_fraction=0.25, progress=False))
    return out


def test_completion_loss_masks_the_prompt_and_matches_full_logits(
    prepared_model_dir: Path, lee_pairs
):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(prepared_model_dir)
    examples, counts = load_examples(
        lee_pairs / "train.jsonl", tok, max_prompt_tokens=160, max_target_tokens=96, limit=3
    )
    assert counts["used"] == 3
    batch = collate(examples, tok.pad_token_id or 0)
    for row, example in enumerate(examples):
        n = example.prompt_len
        assert (batch["labels"][row, :n] == IGNORE_INDEX).all()
        assert (
            batch["labels"][row, n : len(example)] == batch["input_ids"][row, n : len(example)]
        ).all()
        assert (batch["labels"][row, len(example) :] == IGNORE_INDEX).all()
    model = AutoModelForCausalLM.from_pretrained(prepared_model_dir, dtype=torch.float32)
    peft_model = add_lora(model, r=4, alpha=8, dropout=0.0, targets=["q_proj", "v_proj"])
    peft_model.eval()
    with torch.no_grad():
        loss_sum, n_tokens = CompletionLoss(peft_model)(**batch)
        # reference: the model's own loss over full logits, same labels
        full = peft_model(**batch)
    assert int(n_tokens) == sum(len(e) - e.prompt_len for e in examples)
    assert abs(float(loss_sum / n_tokens) - float(full.loss)) < 1e-4
    with pytest.raises(ValueError, match="do not exist"):
        check_target_modules(model, ["query_key_value"])


def test_ds_config_auto_values_and_qlora_guard():
    import json

    cfg = load_train_config("cpu-small")
    raw = json.loads(Path(cfg.ds_config).read_text())
    assert raw["zero_optimization"]["stage"] == 2
    filled = fill_ds_config(raw, cfg, world_size=2, bf16=False)
    assert filled["train_micro_batch_size_per_gpu"] == cfg.micro_batch_size
    assert filled["gradient_accumulation_steps"] == cfg.gradient_accumulation_steps
    assert filled["train_batch_size"] == 2 * cfg.micro_batch_size * cfg.gradient_accumulation_steps
    assert filled["bf16"]["enabled"] is False
    for name in ("gpu-7b-lora", "gpu-7b-qlora"):
        gpu = load_train_config(name)
        assert gpu.use_gpu and fill_ds_config(raw, gpu, 1, bf16=True)["bf16"]["enabled"]
    assert load_train_config("gpu-7b-qlora").quantization == "nf4"
    with pytest.raises(ValueError, match="needs use_gpu"):
        TrainConfig(name="x", quantization="nf4", use_gpu=False)

    class FourBit(torch.nn.Module):
        is_loaded_in_4bit = True

    with pytest.raises(ValueError, match="4/8-bit"):
        refuse_quantized(FourBit())


@pytest.mark.slow
def test_ray_train_zero2_resumes_after_failure_and_adapter_changes_engine(
    lee_pairs: Path, shared_state_dir: Path, database_url: str, tmp_path: Path
):
    import json
    import os
    import subprocess
    import sys

    import yaml

    config = {
        "name": "test-tiny",
        "data_dir": str(lee_pairs),
        "num_workers": 2,
        "epochs": 2,
        "micro_batch_size": 1,
        "gradient_accumulation_steps": 2,
        "learning_rate": 1e-3,
        "max_prompt_tokens": 128,
        "max_train_pairs": 8,
        "max_val_pairs": 4,
        "checkpoint_every_steps": 1,
        "fail_at_step": 3,  # every worker dies in the 2nd epoch; Ray restarts the group
        "max_failures": 1,
        "rouge_pairs": 0,
    }
    config_file = tmp_path / "tiny.yaml"
    config_file.write_text(yaml.safe_dump(config))
    TrainConfig.model_validate(config)
    training_dir = tmp_path / "training"
    env = {
        **os.environ,
        "NEWSDESK_STATE_DIR": str(shared_state_dir),
        "NEWSDESK_TRAINING_DIR": str(training_dir),
        "NEWSDESK_DATABASE_URL": database_url,
    }
    env.pop("RAY_ADDRESS", None)  # its own local Ray, as `python -m` run by hand
    done = subprocess.run(
        [sys.executable, "-m", "train.train_finetune", "--config", str(config_file)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((training_dir / "runs" / "test-tiny" / "summary.json").read_text())
    metrics = summary["metrics"]
    # 8 pairs / (2 workers x 1) / 2 accumulation = 2 steps per epoch, 2 epochs
    assert metrics["global_step"] == 4
    assert metrics["resumed_from_step"] == 2  # the checkpoint before the failure
    assert [h["epoch"] for h in metrics["history"]] == [0, 1]
    assert all(h["eval_loss"] > 0 for h in metrics["history"])
    assert summary["report"]["world_size"] == 2
    assert summary["report"]["data_counts"]["train_examples"] == 8
    adapter = Path(summary["adapter"])
    assert (adapter / "adapter_config.json").is_file()
    assert (adapter / "adapter_model.safetensors").is_file()

    async def recorded() -> registry.Run:
        conn = await asyncpg.connect(database_url)
        try:
            runs = await registry.list_runs(conn)
            assert len(runs) == 1
            await registry.promote(conn, runs[0].id)
            promoted = await registry.promoted_adapter(conn, "cpu-small")
            assert promoted is not None and promoted.adapter_path == str(adapter)
            return runs[0]
        finally:
            await conn.close()

    run = asyncio.run(recorded())
    assert run.status == "finished" and run.metrics["global_step"] == 4
    assert run.config["ds_config_content"]["zero_optimization"]["stage"] == 2
    assert run.data["train"]["teachers"] == {"lead": run.data["train"]["lines"]}

    # the engine loads the adapter, and it changes the answer
    from serving.engine import SummarizeEngine

    engine = SummarizeEngine.load("cpu-small", Settings(state_dir=shared_state_dir))
    pair_article = load_examples(
        lee_pairs / "val.jsonl",
        engine.tokenizer,
        max_prompt_tokens=512,
        max_target_tokens=96,
        limit=1,
    )[0][0].article
    base = engine.summarize([pair_article])[0]
    engine.set_adapter(adapter)
    tuned = engine.summarize([pair_article])[0]
    assert base.kind == tuned.kind == "result"
    assert base.adapter_id is None and tuned.adapter_id
    assert tuned.summary != base.summary


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="QLoRA needs CUDA (bitsandbytes)")
def test_qlora_nf4_trains_one_step_on_cuda(prepared_model_dir: Path, lee_pairs: Path):
    from transformers import AutoTokenizer

    from train.modeling import load_base_model

    tok = AutoTokenizer.from_pretrained(prepared_model_dir)
    examples, _ = load_examples(
        lee_pairs / "train.jsonl", tok, max_prompt_tokens=160, max_target_tokens=96, limit=2
    )
    model = load_base_model(
        prepared_model_dir, dtype=torch.bfloat16, quantization="nf4", device="cuda:0"
    )
    assert getattr(model, "is_loaded_in_4bit", False)
    peft_model = add_lora(model, r=8, alpha=16, dropout=0.0, targets=["q_proj", "v_proj"])
    wrapped = CompletionLoss(peft_model)
    optimizer = torch.optim.AdamW([p for p in wrapped.parameters() if p.requires_grad], lr=1e-3)
    batch = {k: v.cuda() for k, v in collate(examples, tok.pad_token_id or 0).items()}
    before = None
    for _ in range(2):
        loss_sum, n = wrapped(**batch)
        loss = loss_sum / n
        before = before if before is not None else float(loss)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert float(loss) < before
    with pytest.raises(ValueError, match=r"4/8-bit|quantized"):
        refuse_quantized(model)
