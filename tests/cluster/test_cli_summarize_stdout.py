"""``newsdesk summarize FILE... | jq``: stdout carries JSON lines only, everything else stderr.

The installed ``newsdesk`` console script runs as a user runs it, on the session's converted
model (``engine_settings.state_dir``, as in ``tests/cluster/test_cli_model.py``). The second test
adds the kind of output that broke ``| jq``: DeepSpeed's logger writes to a handler bound to
``sys.stdout`` ("Setting accelerator to CPU ..." when DeepSpeed is first imported by
accelerate during the model's first conversion), libraries ``print``, C code writes to fd 1.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from cluster.settings import Settings

NEWS = """\
Harbour town opens flood barrier after six years of work

Residents of Kelmouth watched on Thursday as engineers raised the town's new tidal flood \
barrier for the first time, ending six years of construction that cost 48 million pounds.

The barrier, a row of steel gates across the mouth of the harbour, is designed to hold back \
surges up to two metres above the highest recorded tide. The town flooded three times in the \
past decade, most recently in 2019, when 140 homes and the lifeboat station were damaged.

"We no longer have to sandbag our doors every winter," said Maria Oduya, who runs a bakery on \
the quay. The regional environment agency said the gates would be tested monthly and closed \
whenever forecasters expect a surge.
"""

LOREM = """\
Lorem ipsum

Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut \
labore et dolore magna aliqua. Ut enim ad minim veniam, quis nostrud exercitation ullamco \
laboris nisi ut aliquip ex ea commodo consequat. Duis aute irure dolor in reprehenderit in \
voluptate velit esse cillum dolore eu fugiat nulla pariatur. Excepteur sint occaecat cupidatat \
non proident, sunt in culpa qui officia deserunt mollit anim id est laborum.
"""

# Loaded by Python at start-up (PYTHONPATH): when serving.engine is imported, its
# SummarizeEngine.load first writes to stdout the ways libraries do.
NOISY_SITECUSTOMIZE = """
import ctypes, importlib.abc, importlib.machinery, os, sys

class _Noisy(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "serving.engine":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        exec_module = spec.loader.exec_module

        def noisy_exec(module):
            exec_module(module)
            load = module.SummarizeEngine.load.__func__

            def noisy_load(cls, *args, **kwargs):
                os.environ.setdefault("DS_ACCELERATOR", "cpu")
                import deepspeed

                deepspeed.utils.logger.warning("STRAY deepspeed logger warning")
                print("STRAY print from a library")
                os.write(1, b"STRAY write to fd 1\\n")
                libc = ctypes.CDLL(None)
                libc.printf(b"STRAY C printf, buffered in libc\\n")
                return load(cls, *args, **kwargs)

            module.SummarizeEngine.load = classmethod(noisy_load)

        spec.loader.exec_module = noisy_exec
        return spec

sys.meta_path.insert(0, _Noisy())
"""


def _newsdesk_script() -> str:
    beside = Path(sys.executable).with_name("newsdesk")
    return str(beside) if beside.exists() else (shutil.which("newsdesk") or "newsdesk")


def _summarize(
    files: list[Path], settings: Settings, extra_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NEWSDESK_STATE_DIR": str(settings.state_dir), **(extra_env or {})}
    env.pop("NEWSDESK_MODEL_SOURCE", None)
    return subprocess.run(
        [_newsdesk_script(), "summarize", *map(str, files), "--max-new-tokens", "16"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _json_lines(stdout: str) -> list[dict]:
    lines = stdout.splitlines()
    for line in lines:
        try:
            json.loads(line)
        except json.JSONDecodeError:
            raise AssertionError(f"stdout line is not JSON: {line[:200]!r}") from None
    return [json.loads(line) for line in lines]


def _files(tmp_path: Path) -> list[Path]:
    news = tmp_path / "flood-barrier.txt"
    news.write_text(NEWS, encoding="utf-8")
    lorem = tmp_path / "lorem.txt"
    lorem.write_text(LOREM, encoding="utf-8")
    return [news, lorem]


def _assert_news_then_lorem(outcomes: list[dict]) -> None:
    assert [(o["kind"], o.get("code")) for o in outcomes] == [
        ("result", None),
        ("error", "invalid_input"),
    ]
    assert outcomes[0]["summary"]
    assert "lorem ipsum" in outcomes[1]["message"]


def test_summarize_prints_only_json_lines_one_per_article(
    prepared_model_dir: Path,
    engine_settings: Settings,
    tmp_path: Path,
) -> None:
    done = _summarize(_files(tmp_path), engine_settings)
    assert done.returncode == 0, done.stderr[-2000:]
    _assert_news_then_lorem(_json_lines(done.stdout))
    assert "loading the model" in done.stderr
    assert "summarizing" in done.stderr  # the progress bar


def test_library_output_during_the_engine_load_goes_to_stderr(
    prepared_model_dir: Path,
    engine_settings: Settings,
    tmp_path: Path,
) -> None:
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(NOISY_SITECUSTOMIZE, encoding="utf-8")
    done = _summarize(_files(tmp_path), engine_settings, {"PYTHONPATH": str(hooks)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "STRAY" not in done.stdout
    _assert_news_then_lorem(_json_lines(done.stdout))
    for stray in ("deepspeed logger warning", "print from a library", "write to fd 1", "C printf"):
        assert f"STRAY {stray}" in done.stderr, stray
