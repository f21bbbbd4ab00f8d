"""One poller per database: two FeedIngestion replicas (plain Python, no Ray) on one real
PostgreSQL; one polls, the other waits on the advisory lock; when the holder's session dies
(what a killed process or a dead node does to it) the standby takes over, the old holder stops
polling, and no article is stored twice."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import asyncpg
import pytest

from cluster.settings import Settings
from core.pg_lock import PgLockTimings, PgSessionLock
from ingestion.deployment import INGEST_LOCK_KEY, FeedIngestion
from ingestion.subscriptions import subscribe
from tests.support.feedserver import FeedServer, items, rss_document

FAST = PgLockTimings(heartbeat_s=0.2, heartbeat_timeout_s=0.5, server_gone_s=3.0)


async def _replica(settings: Settings) -> FeedIngestion:
    """A replica as Serve makes one (its ``__init__`` is async)."""
    replica = object.__new__(FeedIngestion)
    await replica.__init__(settings, FAST)  # type: ignore[misc]
    return replica


async def _until(check: Callable[[], Awaitable[bool]], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, f"not within {timeout_s}s: {what}"
        await asyncio.sleep(0.1)


def test_lock_timings_must_let_the_holder_give_up_first() -> None:
    with pytest.raises(ValueError):
        PgLockTimings(heartbeat_s=20, heartbeat_timeout_s=15, server_gone_s=30)


async def test_one_poller_per_database_and_takeover(
    settings: Settings, pool: asyncpg.Pool, feed_server: FeedServer
) -> None:
    s = settings.model_copy(update={"poll_tick_s": 0.3})
    feed_server.route("/a.xml", body=rss_document(items(3, prefix="a")))
    await subscribe(pool, feed_server.url("/a.xml"), s)
    first = await _replica(s)
    await _until(lambda: _state(first, "polling"), 30, "the first replica polls")
    second = await _replica(s)
    try:

        async def stored(n: int) -> bool:
            return await pool.fetchval("SELECT count(*) FROM articles") >= n

        await _until(lambda: stored(3), 30, "3 articles stored")
        await asyncio.sleep(1.0)  # several lock attempts by the second replica
        assert [first.state, second.state] == ["polling", "standby"]
        assert (await second.status())["poller"] is None

        # the holder's session dies (its process or node did): the server frees the lock
        killed = await pool.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = $1",
            f"newsdesk-lock-{INGEST_LOCK_KEY}",
        )
        assert killed == 1  # only the holder keeps a lock connection
        # The old holder notices (its check fails), stops polling and competes for the lock
        # again like the standby (here its process lives on; on a dead node it would not):
        # either may win the next term, never both.
        await _until(lambda: _terms(first, second, 2), 30, "a new term after the loss")
        await _until(lambda: _one_polling(first, second), 30, "one of the two polls")
        await asyncio.sleep(1.0)
        assert sorted([first.state, second.state]) == ["polling", "standby"]
        poller = first if first.state == "polling" else second

        # new items reach the database through the new term's poller, each once
        feed_server.route("/a.xml", body=rss_document(items(5, prefix="a")))
        await pool.execute("UPDATE feeds SET next_due_at = now()")
        await poller.wake()
        await _until(lambda: stored(5), 30, "5 articles stored")
        await asyncio.sleep(1.0)
        assert await pool.fetchval("SELECT count(*) FROM articles") == 5
        assert poller.state == "polling" and first.terms + second.terms == 2
        # a third party cannot take it meanwhile
        other = PgSessionLock(settings.database_url or "", INGEST_LOCK_KEY, FAST)
        assert not await other.try_acquire()
    finally:
        for replica in (first, second):
            await replica.__del__()
    assert first.state == second.state == "stopped"
    # released on stop: the lock is free again
    lock = PgSessionLock(settings.database_url or "", INGEST_LOCK_KEY, FAST)
    assert await lock.try_acquire()
    await lock.release()


async def _state(replica: FeedIngestion, state: str) -> bool:
    return replica.state == state


async def _terms(a: FeedIngestion, b: FeedIngestion, total: int) -> bool:
    return a.terms + b.terms >= total


async def _one_polling(a: FeedIngestion, b: FeedIngestion) -> bool:
    return [a.state, b.state].count("polling") == 1
