"""The local stack: components start in order and stop in reverse (also when one fails);
the default stack runs the FeedPoller over a feeds file; `newsdesk up` / `newsdesk down` as
real processes."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import asyncpg
import pytest
import ray

from cluster.components import Stack, StackContext
from cluster.settings import Settings
from cluster.stack import DatabaseComponent, FeedsComponent, PollerComponent, RayComponent
from ingestion.actor import RAY_NAMESPACE
from tests.support.feedserver import items, rss_document


class Recorder:
    """A component that records its calls (the protocol, exercised without Ray)."""

    def __init__(self, name: str, log: list[str], fail: bool = False) -> None:
        self.name, self.log, self.fail = name, log, fail

    def start(self, ctx: StackContext) -> None:
        self.log.append(f"start {self.name}")
        if self.fail:
            raise RuntimeError(f"{self.name} cannot start")

    def stop(self, ctx: StackContext) -> None:
        self.log.append(f"stop {self.name}")

    def describe(self, ctx: StackContext) -> str:
        return self.name


def test_components_start_in_order_and_stop_in_reverse(tmp_path):
    log: list[str] = []
    stack = Stack(Settings(state_dir=tmp_path), [Recorder(n, log) for n in "abc"])
    with stack:
        assert stack.describe() == [("a", "a"), ("b", "b"), ("c", "c")]
    assert log == ["start a", "start b", "start c", "stop c", "stop b", "stop a"]


def test_a_failing_component_stops_those_already_started(tmp_path):
    log: list[str] = []
    parts = [Recorder("a", log), Recorder("b", log, fail=True), Recorder("c", log)]
    with pytest.raises(RuntimeError, match="b cannot start"):
        Stack(Settings(state_dir=tmp_path), parts).start()
    assert log == ["start a", "start b", "stop a"]


async def _count(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval("SELECT count(*) FROM articles")
    except asyncpg.UndefinedTableError:  # the stack has not migrated the database yet
        return 0
    finally:
        await conn.close()


def _wait_for_articles(dsn: str, n: int, within_s: float = 30) -> None:
    deadline = time.monotonic() + within_s
    while asyncio.run(_count(dsn)) < n:
        assert time.monotonic() < deadline, f"fewer than {n} articles after {within_s}s"
        time.sleep(0.2)


def test_default_stack_polls_the_feeds_file(ray_session, settings, feed_server, tmp_path):
    feed_server.route("/one.xml", body=rss_document(items(3)))
    feed_server.route("/two.xml", body=rss_document(items(2, prefix="two")))
    feeds_file = tmp_path / "feeds.yaml"
    feeds_file.write_text(
        "feeds:\n"
        f"  - url: {feed_server.url('/one.xml')}\n    title: One\n"
        f"  - url: {feed_server.url('/two.xml')}\n"
        "  - url: http://10.9.9.9/private.xml\n"
    )
    name = f"stack-poller-{uuid.uuid4().hex[:8]}"
    s = settings.model_copy(update={"feeds_file": feeds_file, "poller_actor_name": name})
    ray_part = RayComponent(include_dashboard=False)
    stack = Stack(s, [ray_part, DatabaseComponent(), FeedsComponent(), PollerComponent()])
    with stack:
        assert not ray_part.owned  # the session's Ray is reused, and left running
        described = dict(stack.describe())
        assert "3 feeds in feeds.yaml: 2 new, 0 already subscribed, 1 refused" in described["feeds"]
        assert name in described["poller"] and "2 active" in described["poller"]
        assert "PostgreSQL" in described["database"]
        _wait_for_articles(s.database_url or "", 5)
        assert ray.get_actor(name, namespace=RAY_NAMESPACE) is not None
    with pytest.raises(ValueError):
        ray.get_actor(name, namespace=RAY_NAMESPACE)  # stopped with the stack
    assert ray.is_initialized()


@pytest.mark.system
def test_newsdesk_up_and_down_as_processes(database_url, feed_server, tmp_path: Path):
    feed_server.route("/up.xml", body=rss_document(items(4, prefix="up")))
    feeds_file = tmp_path / "feeds.yaml"
    feeds_file.write_text(f"feeds:\n  - url: {feed_server.url('/up.xml')}\n")
    env = dict(
        os.environ,
        NEWSDESK_DATABASE_URL=database_url,
        NEWSDESK_STATE_DIR=str(tmp_path / "state"),
        NEWSDESK_FEEDS_FILE=str(feeds_file),
        NEWSDESK_ALLOW_LOOPBACK="true",
        NEWSDESK_SAMPLE_FEEDS="false",  # only the feeds file's feed (sample feeds: test_stories)
        NEWSDESK_POLLER_ACTOR_NAME=f"up-poller-{uuid.uuid4().hex[:8]}",
        COLUMNS="200",
    )
    cmd = [str(Path(sys.executable).parent / "newsdesk")]
    # Stage 1 of the stack (ingestion); the Serve app's own tests start the rest.
    ingestion_only = [a for n in ("ray", "database", "feeds", "poller") for a in ("--only", n)]
    log_path = tmp_path / "up.log"
    log_file = open(log_path, "w")  # a file, not a pipe nobody reads while it runs
    up = subprocess.Popen(
        [*cmd, "up", "--status-every", "0", "--no-dashboard", *ingestion_only],
        env=env,
        stdout=log_file,
        stderr=subprocess.STDOUT,
    )
    try:
        _wait_for_articles(database_url, 4, within_s=120)
        assert (tmp_path / "state" / "stack.json").exists()  # written before the start
        down = subprocess.run([*cmd, "down"], env=env, capture_output=True, text=True, timeout=120)
        assert down.returncode == 0, down.stdout + down.stderr + log_path.read_text()
        assert "stack stopped" in down.stdout
        up.wait(timeout=60)
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
        log_file.close()
    out = log_path.read_text()
    assert up.returncode == 0, out
    assert "newsdesk stack running" in out and "FeedPoller actor" in out
    assert "stopping..." in out and out.rstrip().endswith("stopped")
    assert not (tmp_path / "state" / "stack.json").exists()
    assert (
        "no stack running"
        in subprocess.run(
            [*cmd, "down"], env=env, capture_output=True, text=True, timeout=60
        ).stdout
    )
