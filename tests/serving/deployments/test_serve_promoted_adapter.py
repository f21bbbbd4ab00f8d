"""Which adapter a Summarizer serves: an explicit ``user_config`` adapter (a pin) > the
profile's latest promotion in the registry > the profile's own; decided at each
``reconfigure`` (replica start, or a deploy that changes the user_config), on real PostgreSQL
with a real (untrained) LoRA adapter on the default model."""

from __future__ import annotations

from pathlib import Path

import asyncpg

from train import registry


def _lora(model_dir: Path, folder: Path) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    lora = get_peft_model(
        AutoModelForCausalLM.from_pretrained(model_dir),
        LoraConfig(r=4, target_modules=["q_proj", "v_proj"]),
    )
    lora.save_pretrained(folder)
    return folder


async def test_promotion_is_served_unless_pinned(
    summarizer, pool: asyncpg.Pool, prepared_model_dir: Path, tmp_path: Path
) -> None:
    redeploy = {"max_batch_size": 4}  # a config file that leaves `adapter` out
    await summarizer.reconfigure(redeploy)
    info = summarizer.info()
    assert (info["adapter_id"], info["adapter_source"]) == (None, "profile")

    adapter = _lora(prepared_model_dir, tmp_path / "lora-prom")
    run_id = await registry.start_run(
        pool, name="run-p", profile="cpu-small", config={}, data={}, prompt_version="v"
    )
    await registry.finish_run(pool, run_id, metrics={}, report={}, adapter_path=adapter)
    await registry.promote(pool, run_id)
    await summarizer.reconfigure(redeploy)  # what a restarted replica or a redeploy runs
    info = summarizer.info()
    assert info["adapter_id"].startswith("lora-prom@"), info
    assert info["adapter_source"] == f"promoted:run-p#{run_id}"

    await summarizer.reconfigure({**redeploy, "adapter": None})  # a pin wins: the bare base
    info = summarizer.info()
    assert (info["adapter_id"], info["adapter_source"]) == (None, "user_config")

    await summarizer.reconfigure(redeploy)  # the pin is gone from the config: promoted again
    assert summarizer.info()["adapter_id"].startswith("lora-prom@")

    await registry.promote(pool, None, profile="cpu-small")  # back to the base, by promotion
    await summarizer.reconfigure({"max_batch_size": 2})
    info = summarizer.info()
    assert (info["adapter_id"], info["adapter_source"]) == (None, "promoted:base")
