"""The poll loop: claims due feeds and polls them concurrently, once or forever.

Two layers, each usable alone:
- ``poll_once(pool, settings)``: poll every feed due now, once; returns a ``PollSummary``.
  The CLI (``newsdesk ingest --once``) runs it in-process, without Ray.
- ``Poller``: owns the pool, the fetcher and the parse workers, and the loop
  (``run_forever``) that polls whatever is due, sleeps until the next feed is due (or it is
  woken), and never stops on an error. ``ingestion.actor.FeedPoller`` runs one inside Ray.

What happens to one feed (and how its failures are kept to it) is ``feed_poll.poll_feed``;
PostgreSQL going away is waited out by ``db_retry``, here too, forever in the loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor
from datetime import UTC, datetime
from typing import Any

import asyncpg

from core import db as dbmod
from ingestion import store
from ingestion.db_retry import with_db_retry
from ingestion.feed_poll import PollContext, poll_feed
from ingestion.fetcher import Fetcher
from ingestion.logs import event
from ingestion.metrics import IngestMetrics
from ingestion.outcomes import FeedReport, PollSummary
from ingestion.parse_pool import make_parse_executor
from ingestion.settings import IngestionSettings
from ingestion.subscriptions import check_feed_url, subscribe

log = logging.getLogger(__name__)


async def poll_once(
    pool: asyncpg.Pool,
    settings: IngestionSettings,
    *,
    fetcher: Fetcher | None = None,
    metrics: IngestMetrics | None = None,
    executor: Executor | None = None,
    on_feed: Callable[[FeedReport], None] | None = None,
    stop: asyncio.Event | None = None,
) -> PollSummary:
    """Poll every feed that is due now, once each, ``fetch_concurrency`` at a time.

    Feeds are claimed in batches (so two pollers share the work, never a feed); a feed
    that becomes due again during this poll (a short backoff) waits for the next one.
    """
    started = time.perf_counter()
    own_fetcher = fetcher is None
    ctx = PollContext(
        pool, settings, fetcher or Fetcher(settings), metrics or IngestMetrics(), executor
    )
    summary = PollSummary()
    batch = max(2 * settings.fetch_concurrency, 8)
    seen: set[int] = set()
    in_flight: set[asyncio.Task[FeedReport]] = set()
    exhausted = False
    try:
        while True:
            stopping = stop is not None and stop.is_set()
            if not exhausted and not stopping and len(in_flight) <= batch // 2:
                token, feeds = await ctx.db(
                    lambda n=batch - len(in_flight): store.claim_due_feeds(
                        pool, limit=n, lease_s=settings.feed_lease_s
                    ),
                    "claim due feeds",
                )
                again = [f.id for f in feeds if f.id in seen]
                if again:
                    await ctx.db(
                        lambda t=token, ids=again: store.release_feeds(pool, t, ids),
                        "release feeds",
                    )
                fresh = [f for f in feeds if f.id not in seen]
                if not fresh:
                    exhausted = True
                for feed in fresh:
                    seen.add(feed.id)
                    in_flight.add(asyncio.create_task(poll_feed(ctx, feed, token)))
            if not in_flight:
                break
            done, in_flight = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                report = task.result()  # poll_feed never raises
                summary.add(report)
                if on_feed is not None:
                    on_feed(report)
    finally:
        for task in in_flight:  # only on cancellation: leases expire, nothing is lost
            task.cancel()
        if own_fetcher:
            await ctx.fetcher.aclose()
    summary.elapsed_s = time.perf_counter() - started
    return summary


class Poller:
    """The poll loop with its resources; in-process (CLI) or inside the ``FeedPoller`` actor."""

    def __init__(self, settings: IngestionSettings, *, pool: asyncpg.Pool | None = None) -> None:
        self.settings = settings
        self._pool = pool
        self._own_pool = pool is None
        self._fetcher: Fetcher | None = None
        self._executor: Executor | None = None
        self.metrics = IngestMetrics()
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._started_lock = asyncio.Lock()
        self.polls = 0
        self.last_summary: PollSummary | None = None
        self.totals = PollSummary()
        self.last_error: str | None = None
        self.running = False
        self.started_at: datetime | None = None

    async def start(self) -> None:
        """Connect (waiting for PostgreSQL as long as ``db_retry_timeout_s``)."""
        async with self._started_lock:
            if self._pool is None:
                self._pool = await with_db_retry(
                    lambda: dbmod.create_pool(self.settings),
                    timeout_s=self.settings.db_retry_timeout_s,
                    what="connect",
                )
            if self._fetcher is None:
                self._fetcher = Fetcher(self.settings)
            if self._executor is None:
                self._executor = make_parse_executor(self.settings)

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("Poller.start() first")
        return self._pool

    async def poll_once(self, on_feed: Callable[[FeedReport], None] | None = None) -> PollSummary:
        await self.start()
        assert self._fetcher is not None
        summary = await poll_once(
            self.pool,
            self.settings,
            fetcher=self._fetcher,
            metrics=self.metrics,
            executor=self._executor,
            on_feed=on_feed,
            stop=self._stop,
        )
        self.polls += 1
        self.last_summary = summary
        for report in summary.reports:
            self.totals.add(report)
        self.totals.reports.clear()  # keep the totals small
        return summary

    async def run_forever(self) -> None:
        """Poll what is due, sleep until the next feed is due; until ``stop()``."""
        self.running = True
        self.started_at = datetime.now(UTC)
        failures = 0
        try:
            while not self._stop.is_set():
                try:
                    summary = await self.poll_once()
                    wait = await with_db_retry(
                        lambda: store.seconds_until_next_due(self.pool),
                        timeout_s=self.settings.db_retry_timeout_s,
                        what="next due",
                    )
                    wait = self.settings.poll_tick_s if wait is None else wait
                    if summary.polled == 0:
                        wait = max(wait, 0.2)  # due but claimed elsewhere: do not spin
                    failures = 0
                    self.last_error = None
                except Exception as exc:  # the loop never dies; it says why it waits
                    failures += 1
                    self.last_error = f"{type(exc).__name__}: {exc}"
                    event(log, logging.ERROR, "poll_failed", error=self.last_error)
                    wait = min(2.0 * failures, self.settings.poll_tick_s * 6)
                await self._sleep(min(max(wait, 0.05), self.settings.poll_tick_s))
        finally:
            self.running = False

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._wake.wait(), timeout=seconds)
        except TimeoutError:
            pass
        self._wake.clear()

    def wake(self) -> None:
        self._wake.set()

    async def add_feed(
        self, url: str, *, interval_s: int | None = None, title: str | None = None
    ) -> tuple[store.Feed, bool]:
        """Subscribe to ``url`` and wake the loop, so a new feed is polled now."""
        check_feed_url(url, self.settings)  # refused at once, even while connecting
        await self.start()
        feed, created = await subscribe(
            self.pool, url, self.settings, title=title, interval_s=interval_s
        )
        self.wake()
        return feed, created

    async def remove_feed(self, url_or_id: str | int) -> store.Feed | None:
        await self.start()
        return await store.remove_feed(self.pool, url_or_id)

    async def status(self) -> dict[str, Any]:
        feeds: dict[str, int] | None = None
        db_state = "ok"
        if self._pool is None:  # still connecting (or waiting for PostgreSQL): answer anyway
            db_state = "not connected yet"
        else:
            try:
                feeds = await asyncio.wait_for(store.feed_status_counts(self._pool), timeout=5)
            except Exception as exc:
                db_state = f"unavailable: {type(exc).__name__}: {exc}"
        return {
            "running": self.running,
            "started_at": self.started_at.isoformat() if self.started_at else None,
            "polls": self.polls,
            "feeds": feeds,
            "database": db_state,
            "last_poll": self.last_summary.as_dict() if self.last_summary else None,
            "totals": self.totals.as_dict(),
            "metrics": self.metrics.snapshot(),
            "last_error": self.last_error,
        }

    def request_stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def allow_restart(self) -> None:
        """Undo ``request_stop`` so ``run_forever`` can run again (the actor's ``start``)."""
        self._stop.clear()

    async def close(self) -> None:
        self.request_stop()
        if self._fetcher is not None:
            await self._fetcher.aclose()
            self._fetcher = None
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
        if self._pool is not None and self._own_pool:
            await self._pool.close()
            self._pool = None
