"""``newsdesk model prepare`` and ``newsdesk summarize FILE...`` as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from cluster.settings import Settings
from tests.support.engine_articles import GRADED


def _newsdesk(args: list[str], settings: Settings) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NEWSDESK_STATE_DIR": str(settings.state_dir)}
    env.pop("NEWSDESK_MODEL_SOURCE", None)
    return subprocess.run(
        [sys.executable, "-c", "from cluster.cli import main; main()", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_model_prepare_prints_the_folder(prepared_model_dir: Path, engine_settings) -> None:  # type: ignore[no-untyped-def]
    done = _newsdesk(["model", "prepare"], engine_settings)
    assert done.returncode == 0, done.stderr[-2000:]
    assert Path(done.stdout.strip()) == prepared_model_dir


def test_summarize_files_prints_one_result_per_line(
    prepared_model_dir: Path,
    engine_settings,  # type: ignore[no-untyped-def]
    tmp_path: Path,
) -> None:
    text_file = tmp_path / "quake.txt"
    text_file.write_text(f"{GRADED[-1].title}\n\n{GRADED[-1].text}\n", encoding="utf-8")
    json_file = tmp_path / "two.json"
    json_file.write_text(
        json.dumps([GRADED[0].model_dump(mode="json", exclude={"content_hash"}), {"text": ""}])
    )
    broken = tmp_path / "broken.json"
    broken.write_text('{"title": "x", "text": ')
    done = _newsdesk(
        ["summarize", str(text_file), str(json_file), str(broken), "--max-new-tokens", "16"],
        engine_settings,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(o["kind"], o.get("code")) for o in lines] == [
        ("result", None),
        ("result", None),
        ("error", "empty_input"),
        ("error", "invalid_input"),
    ]
    assert lines[0]["importance"] > lines[1]["importance"]  # earthquake over napping cat
    assert "broken.json" in lines[3]["message"]
    assert "summarizing" in done.stderr  # the progress bar
