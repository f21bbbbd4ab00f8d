"""The model registry on real PostgreSQL, and `newsdesk models list/promote` as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

from train import registry


def _adapter(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text('{"peft_type": "LORA"}')
    return folder


async def _finished_run(conn, name: str, adapter: Path, rouge: float) -> int:  # type: ignore[no-untyped-def]
    run_id = await registry.start_run(
        conn,
        name=name,
        profile="cpu-small",
        config={"epochs": 1},
        data={"train": {"lines": 10}},
        prompt_version="summarize-v1",
    )
    await registry.finish_run(
        conn,
        run_id,
        metrics={"eval_loss": 1.5, "rougeL_base": 30.0, "rougeL_adapter": rouge, "global_step": 7},
        report={"data_counts": {}},
        adapter_path=adapter,
    )
    return run_id


async def test_runs_are_recorded_and_promotion_rules_hold(pool: asyncpg.Pool, tmp_path: Path):
    first = await _finished_run(pool, "run-a", _adapter(tmp_path / "a"), 40.0)
    second = await _finished_run(pool, "run-b", _adapter(tmp_path / "b"), 45.0)
    running = await registry.start_run(
        pool, name="run-c", profile="cpu-small", config={}, data={}, prompt_version="v"
    )
    failed = await registry.start_run(
        pool, name="run-d", profile="cpu-small", config={}, data={}, prompt_version="v"
    )
    await registry.fail_run(pool, failed, "WorkerGroupError: boom")

    runs = await registry.list_runs(pool)
    assert [r.name for r in runs] == ["run-d", "run-c", "run-b", "run-a"]
    assert runs[0].status == "failed" and "boom" in (runs[0].error or "")
    assert runs[2].metrics["rougeL_adapter"] == 45.0
    assert await registry.promoted_adapter(pool, "cpu-small") is None

    with pytest.raises(registry.RegistryError, match="running"):
        await registry.promote(pool, running)
    with pytest.raises(registry.RegistryError, match="no training run"):
        await registry.promote(pool, 9999)
    with pytest.raises(registry.RegistryError, match="trained for"):
        await registry.promote(pool, first, profile="gpu-7b")

    promotion = await registry.promote(pool, first)
    assert promotion.adapter_path == str(tmp_path / "a")
    assert promotion.adapter_id == f"run-a#{first}"
    promotion = await registry.promote(pool, second)
    assert (await registry.promoted_adapter(pool, "cpu-small")).run_id == second
    assert [r.promoted for r in await registry.list_runs(pool)] == [False, False, True, False]
    assert registry.serve_user_config_patch(promotion) == {"adapter": str(tmp_path / "b")}

    # a resubmitted run (same name) reuses its row, and is running again
    again = await registry.start_run(
        pool, name="run-a", profile="cpu-small", config={}, data={}, prompt_version="v"
    )
    assert again == first
    # its adapter folder gone: not promotable
    await registry.finish_run(pool, first, metrics={}, report={}, adapter_path=tmp_path / "gone")
    with pytest.raises(registry.RegistryError, match="no adapter"):
        await registry.promote(pool, first)

    base = await registry.promote(pool, None, profile="cpu-small")
    assert base.adapter_path is None and base.adapter_id is None
    assert registry.serve_user_config_patch(base) == {"adapter": None}


def _cli(database_url: str, state_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "NEWSDESK_DATABASE_URL": database_url,
        "NEWSDESK_STATE_DIR": str(state_dir),
        "COLUMNS": "200",
    }
    return subprocess.run(
        [str(Path(sys.executable).parent / "newsdesk"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def test_models_cli_lists_and_promotes(pool, settings, tmp_path: Path):
    run_id = await _finished_run(pool, "cli-run", _adapter(tmp_path / "adapter"), 52.5)
    dsn, state = settings.database_url, settings.state_dir

    listed = _cli(dsn, state, "models", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = [json.loads(line) for line in listed.stdout.splitlines() if line.strip().startswith("{")]
    assert rows and rows[0]["id"] == run_id and rows[0]["promoted"] is False
    assert rows[0]["metrics"]["rougeL_adapter"] == 52.5

    promoted = _cli(dsn, state, "models", "promote", str(run_id))
    assert promoted.returncode == 0, promoted.stderr
    assert f"cli-run#{run_id}" in promoted.stdout
    assert (await registry.promoted_adapter(pool, "cpu-small")).run_id == run_id

    table = _cli(dsn, state, "models", "list")
    assert table.returncode == 0 and "cli-run" in table.stdout and "52.5" in table.stdout

    missing = _cli(dsn, state, "models", "promote", "424242")
    assert missing.returncode == 1 and "no training run" in missing.stderr
    neither = _cli(dsn, state, "models", "promote")
    assert neither.returncode == 2
