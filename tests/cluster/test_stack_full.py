"""`newsdesk up` as users run it (the README's main job): the whole stack in one process on
the embedded defaults' path (sample feeds of real ABC articles over file:// URLs, the Serve
app with the real default model, the summarization loop, the story assigner and feed
ingestion, as ``serve deploy`` runs it on a cluster), observed from outside over HTTP and
through `newsdesk status`, then stopped by `newsdesk down`.

Only the database is a test one (a fresh PostgreSQL database instead of the embedded server)
and the state dir is the session's shared one (the converted model is reused).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from cluster.local_cluster import free_port

pytestmark = [pytest.mark.system, pytest.mark.timeout(900)]


def _wait(what: str, check, within_s: float, log: Path):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + within_s
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(2)
    tail = log.read_text()[-4000:] if log.exists() else ""
    raise AssertionError(f"{what} not within {within_s}s (last: {last!r})\n{tail}")


def test_newsdesk_up_serves_summarized_stories_then_down_stops_it(
    database_url: str, engine_settings, tmp_path: Path
) -> None:
    state = engine_settings.resolved_state_dir()
    (state / "stack.json").unlink(missing_ok=True)
    feeds_file = tmp_path / "feeds.yaml"
    feeds_file.write_text("feeds: []\n")  # offline: the sample feeds only
    port = free_port()
    env = dict(
        os.environ,
        NEWSDESK_DATABASE_URL=database_url,
        NEWSDESK_STATE_DIR=str(state),
        NEWSDESK_FEEDS_FILE=str(feeds_file),
        NEWSDESK_SERVE_PORT=str(port),
        NEWSDESK_SUMMARIZE_LOOP_INTERVAL_S="2",
        NEWSDESK_STORY_ASSIGN_INTERVAL_S="2",
        COLUMNS="250",
    )
    env.pop("NEWSDESK_SAMPLE_FEEDS", None)  # the default: on
    cmd = [str(Path(sys.executable).parent / "newsdesk")]
    log_path = tmp_path / "up.log"
    log_file = open(log_path, "w")  # a file, not a pipe nobody reads while it runs
    up = subprocess.Popen(
        [*cmd, "up", "--status-every", "0"], env=env, stdout=log_file, stderr=subprocess.STDOUT
    )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait(
            "the stack table",
            lambda: "newsdesk stack running" in log_path.read_text(),
            300,
            log_path,
        )
        out = log_path.read_text()
        assert f"digest page {base}/" in out
        dashboard = re.search(r"dashboard (http://[0-9.:]+)", out)
        assert dashboard, out
        assert httpx.get(dashboard.group(1), timeout=10).status_code == 200

        _wait(
            "/readyz 200",
            lambda: httpx.get(f"{base}/readyz", timeout=10).status_code == 200,
            300,
            log_path,
        )

        def stories() -> list[dict]:
            r = httpx.get(f"{base}/v1/stories", params={"limit": 5}, timeout=30)
            return r.json()["stories"] if r.status_code == 200 else []

        found = _wait("a summarized story", stories, 420, log_path)
        story = found[0]
        assert len(story["summary"].split()) >= 3
        assert 0 <= story["importance"] <= 100
        assert story["sources"] and story["why"]
        assert story["articles"][0]["link"].startswith(
            ("http", "/v1/articles/")
        )  # file:// is not linked

        page = httpx.get(f"{base}/", timeout=10)
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]

        status = subprocess.run(
            [*cmd, "status", "--json"], env=env, capture_output=True, text=True, timeout=120
        )
        assert status.returncode == 0, status.stderr
        data = json.loads(status.stdout)
        assert data["feeds"].get("active", 0) >= 4, data["feeds"]
        assert data["articles"] >= 300 and data["summarized_24h"] >= 1, data
        assert data["api"] and "cache_hit_rate" in data["api"], data["api"]

        down = subprocess.run([*cmd, "down"], env=env, capture_output=True, text=True, timeout=180)
        assert down.returncode == 0, down.stdout + down.stderr
        up.wait(timeout=120)
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
        log_file.close()
    out = log_path.read_text()
    assert up.returncode == 0, out[-4000:]
    assert out.rstrip().endswith("stopped")
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{base}/healthz", timeout=5)
