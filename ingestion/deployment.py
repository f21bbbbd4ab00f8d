"""FeedIngestion: the feed poller as a Ray Serve deployment, so ``serve deploy`` alone ingests.

Each replica runs :class:`ingestion.poll_loop.Poller`'s loop in its background, but only while it
holds the ingestion lock: a PostgreSQL session advisory lock (:class:`core.pg_lock.PgSessionLock`,
key ``INGEST_LOCK_KEY``) on a connection of its own. So exactly one poller works per database
at a time, whatever hosts it:

- two replicas of this deployment (or an old one overlapping a redeploy): the second waits
  for the lock, a hot standby;
- a replica whose node dies: its connection dies with it and the server frees the lock (at
  once for a killed process, within ``PgLockTimings.server_gone_s`` for a vanished host); Serve
  starts a replacement replica on another node with the resource the config asks for, which
  takes the lock and polls on;
- two Ray clusters (or ``newsdesk ingest``-style processes using the same lock) on one
  database: still one poller, which a named detached Ray actor (unique per Ray cluster, not per
  database) could not promise.

A replica that loses the lock (its connection stops answering) stops polling at once and
waits to take it again. Even two pollers at once would ingest nothing twice: feeds are claimed
with a lease (``feed_lease_s``) and articles are unique per feed in PostgreSQL; the lock makes
the poll schedule and the metrics those of one poller, and saves the duplicate fetches.

``check_health`` fails if the background task ever ends, so Serve replaces the replica.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

from ray import serve

from core import db as dbmod
from core.pg_lock import PgLockTimings, PgSessionLock
from ingestion.logs import configure_process_logging, event
from ingestion.poll_loop import Poller
from ingestion.settings import IngestionSettings

log = logging.getLogger(__name__)

INGEST_LOCK_KEY = 7_231_001  # advisory-lock id of the feed poller (001: ingestion)
STOP_TIMEOUT_S = 30.0


class FeedIngestion:
    """One replica: waits for the ingestion lock, then polls until it loses it or stops."""

    async def __init__(
        self, settings: IngestionSettings, timings: PgLockTimings | None = None
    ) -> None:
        configure_process_logging()
        self.settings = settings
        self._timings = timings or PgLockTimings()
        self._lock: PgSessionLock | None = None
        self._poller: Poller | None = None
        self._stop = asyncio.Event()
        self.state = "starting"
        self.terms = 0  # times this replica became the poller
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        try:
            dsn = await dbmod.resolve_database_url(self.settings)
            self._lock = PgSessionLock(dsn, INGEST_LOCK_KEY, self._timings)
            while not self._stop.is_set():
                self.state = "standby"
                if not await self._lock.acquire(self.settings.poll_tick_s, self._stop):
                    break
                self.terms += 1
                self.state = "polling"
                event(log, logging.INFO, "poller_lock_taken", pid=os.getpid(), term=self.terms)
                await self._poll_while_held()
        finally:
            self.state = "stopped"
            if self._lock is not None:
                await self._lock.release()

    async def _poll_while_held(self) -> None:
        assert self._lock is not None
        self._poller = Poller(self.settings.model_copy(update={"database_url": self._lock.dsn}))
        run = asyncio.ensure_future(self._poller.run_forever())
        watch = asyncio.ensure_future(self._lock.watch())
        stop = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({run, watch, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if watch.done() and not self._stop.is_set():
                event(log, logging.WARNING, "poller_lock_lost", pid=os.getpid())
            self._poller.request_stop()
            try:
                await asyncio.wait_for(asyncio.shield(run), STOP_TIMEOUT_S)
            except (TimeoutError, Exception):
                run.cancel()
            watch.cancel()
            stop.cancel()
            await self._poller.close()

    async def status(self) -> dict[str, Any]:
        poller = await self._poller.status() if self._poller is not None else None
        return {
            "state": self.state,  # standby: another replica (or process) holds the lock
            "pid": os.getpid(),
            "node_id": _node_id(),
            "terms": self.terms,
            "poller": poller if self.state == "polling" else None,
        }

    async def wake(self) -> None:
        """Poll due feeds now (e.g. right after one was added)."""
        if self._poller is not None:
            self._poller.wake()

    async def check_health(self) -> None:
        if self._task.done():
            raise RuntimeError(f"feed ingestion ended: {self._task!r}")

    async def __del__(self) -> None:
        self._stop.set()
        try:
            await asyncio.wait_for(self._task, STOP_TIMEOUT_S + 5)
        except Exception:
            self._task.cancel()


def _node_id() -> str | None:
    import ray

    if not ray.is_initialized():  # plain Python (tests): asking would start a Ray
        return None
    try:
        return ray.get_runtime_context().get_node_id()
    except Exception:  # not inside Ray (tests)
        return None


FeedIngestionDeployment = serve.deployment(name="FeedIngestion", num_replicas=1)(FeedIngestion)
