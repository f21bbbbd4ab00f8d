"""The poller: claims due feeds, fetches them concurrently, parses, normalizes and stores.

Three layers, each usable alone:
- ``poll_once(pool, settings)``: poll every feed due now, once; returns a ``PollSummary``.
  The CLI (``newsdesk ingest --once``) runs it in-process, without Ray.
- ``Poller``: owns the pool, the fetcher and the loop (``run_forever``) that polls whatever
  is due, sleeps until the next feed is due (or it is woken), and never stops on an error.
- ``FeedPoller``: the named Ray actor (async) around a ``Poller``; detachable.

Failure handling: a feed's own failures (network, HTTP, parse, a bug) become a recorded
reason on that feed and the poll goes on. PostgreSQL going away is different: every database
step waits and retries (``db_retry_timeout_s`` per step, the loop itself forever), the fetched
body kept in memory, so after a restart of PostgreSQL the poll carries on; articles and the
feed's new validators are written in one transaction, so nothing is lost or stored twice.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import multiprocessing
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import asyncpg
import ray

from ingestion import db as dbmod
from ingestion import store
from ingestion.fetcher import Fetcher, FetchOutcome, FetchResult
from ingestion.logs import event
from ingestion.metrics import IngestMetrics
from ingestion.normalizer import Normalized, normalize_entries
from ingestion.parser import FeedParseError, ParsedFeed, parse_feed
from ingestion.schedule import after_failure, after_success
from ingestion.settings import Settings
from ingestion.urlguard import check_url

log = logging.getLogger(__name__)
T = TypeVar("T")

RAY_NAMESPACE = "newsdesk"

OK = "ok"
NOT_MODIFIED = "not_modified"
PARSE_ERROR = "parse_error"
INTERNAL_ERROR = "internal_error"
DB_UNAVAILABLE = "db_unavailable"


# --- results ---------------------------------------------------------------------------------


@dataclass(slots=True)
class FeedReport:
    feed_id: int
    url: str
    outcome: str
    http_status: int | None = None
    new: int = 0
    duplicate: int = 0
    copies: int = 0
    rejected: int = 0
    reason: str | None = None
    elapsed_s: float = 0.0
    fetch_s: float = 0.0
    rejected_reasons: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class PollSummary:
    feeds: Counter[str] = field(default_factory=Counter)  # outcome -> feeds
    new: int = 0
    duplicate: int = 0
    copies: int = 0
    rejected: int = 0
    rejected_reasons: Counter[str] = field(default_factory=Counter)
    reports: list[FeedReport] = field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def polled(self) -> int:
        return sum(self.feeds.values())

    @property
    def feeds_ok(self) -> int:
        return self.feeds[OK]

    @property
    def feeds_not_modified(self) -> int:
        return self.feeds[NOT_MODIFIED]

    @property
    def feeds_failed(self) -> int:
        return self.polled - self.feeds_ok - self.feeds_not_modified

    def add(self, report: FeedReport) -> None:
        self.feeds[report.outcome] += 1
        self.new += report.new
        self.duplicate += report.duplicate
        self.copies += report.copies
        self.rejected += report.rejected
        self.rejected_reasons.update(report.rejected_reasons)
        self.reports.append(report)

    def as_dict(self, *, reports: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "feeds": dict(self.feeds),
            "feeds_ok": self.feeds_ok,
            "feeds_not_modified": self.feeds_not_modified,
            "feeds_failed": self.feeds_failed,
            "articles_new": self.new,
            "articles_duplicate": self.duplicate,
            "articles_copies": self.copies,
            "articles_rejected": self.rejected,
            "rejected_reasons": dict(self.rejected_reasons),
            "elapsed_s": round(self.elapsed_s, 3),
        }
        if reports:
            out["reports"] = [asdict(r) for r in self.reports]
        return out


# --- database waits --------------------------------------------------------------------------


class DatabaseUnavailable(Exception):
    pass


def is_db_unavailable(exc: BaseException) -> bool:
    """Errors that mean "PostgreSQL is away (restarting, unreachable)": wait and retry."""
    if isinstance(
        exc,
        OSError
        | TimeoutError
        | asyncpg.PostgresConnectionError
        | asyncpg.CannotConnectNowError
        | asyncpg.AdminShutdownError
        | asyncpg.CrashShutdownError
        | asyncpg.TooManyConnectionsError
        | asyncpg.TransactionRollbackError,  # deadlock / serialization: retry the unit
    ):
        return True
    return isinstance(exc, asyncpg.InterfaceError) and "closed" in str(exc)


async def with_db_retry(
    op: Callable[[], Awaitable[T]],
    *,
    timeout_s: float,
    what: str,
    pool: asyncpg.Pool | None = None,
    feed_id: int | None = None,
) -> T:
    """Run ``op``; while PostgreSQL is away, wait and retry it for up to ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    delay = 0.1
    attempt = 0
    while True:
        try:
            return await op()
        except Exception as exc:
            if not is_db_unavailable(exc):
                raise
            attempt += 1
            if pool is not None:
                # Connections from before a restart are dead: drop them all at once.
                await pool.expire_connections()
            if time.monotonic() + delay > deadline:
                raise DatabaseUnavailable(f"{what}: PostgreSQL unavailable: {exc}") from exc
            level = logging.WARNING if attempt in (1, 10) or attempt % 50 == 0 else logging.DEBUG
            event(log, level, "db_wait", what=what, feed_id=feed_id, attempt=attempt, error=exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)


# --- parse + normalize (pure; runs in-process or in a worker process) -------------------------


@dataclass(slots=True)
class ParseOutput:
    title: str | None
    site_url: str | None
    language: str | None
    problem: str | None
    normalized: Normalized
    entries_seen: int


def parse_and_normalize(
    body: bytes,
    headers: dict[str, str],
    *,
    base_url: str,
    feed_id: int,
    source: str | None,
    fetched_at: datetime,
    max_chars: int,
) -> ParseOutput:
    parsed: ParsedFeed = parse_feed(body, headers, base_url=base_url)
    normalized = normalize_entries(
        parsed,
        feed_id=feed_id,
        source=source,
        base_url=base_url,
        fetched_at=fetched_at,
        max_chars=max_chars,
    )
    return ParseOutput(
        title=parsed.title,
        site_url=parsed.site_url,
        language=(parsed.language or "")[:16] or None,
        problem=parsed.problem,
        normalized=normalized,
        entries_seen=len(parsed.entries),
    )


def make_parse_executor(settings: Settings) -> Executor | None:
    """Worker processes for parsing (``parse_workers`` > 0), else None (parse in-process)."""
    if settings.parse_workers <= 0:
        return None
    # spawn, not fork: the poller may run inside Ray, whose threads do not survive a fork.
    return ProcessPoolExecutor(
        max_workers=settings.parse_workers, mp_context=multiprocessing.get_context("spawn")
    )


# --- one feed ---------------------------------------------------------------------------------


@dataclass
class _Ctx:
    pool: asyncpg.Pool
    settings: Settings
    fetcher: Fetcher
    metrics: IngestMetrics
    executor: Executor | None

    async def db(self, op: Callable[[], Awaitable[T]], what: str, feed_id: int | None = None) -> T:
        return await with_db_retry(
            op,
            timeout_s=self.settings.db_retry_timeout_s,
            what=what,
            pool=self.pool,
            feed_id=feed_id,
        )

    async def parse(
        self, result: FetchResult, feed: store.Feed, fetched_at: datetime
    ) -> ParseOutput:
        kwargs = {
            "base_url": result.final_url,
            "feed_id": feed.id,
            "source": feed.title,
            "fetched_at": fetched_at,
            "max_chars": self.settings.max_article_chars,
        }
        if self.executor is None:
            return parse_and_normalize(result.body, result.headers, **kwargs)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self.executor, _parse_in_worker, result.body, result.headers, kwargs
        )


def _parse_in_worker(body: bytes, headers: dict[str, str], kwargs: dict[str, Any]) -> ParseOutput:
    return parse_and_normalize(body, headers, **kwargs)


async def _write_failure(
    ctx: _Ctx,
    feed: store.Feed,
    token: Any,
    report: FeedReport,
    *,
    retry_after_s: float | None = None,
) -> None:
    state = after_failure(
        report.outcome,
        report.reason or report.outcome,
        failures_before=feed.consecutive_failures,
        settings=ctx.settings,
        retry_after_s=retry_after_s,
        gone=report.outcome == FetchOutcome.GONE,
    )

    async def op() -> None:
        async with ctx.pool.acquire() as conn:
            await store.record_poll(
                conn, feed.id, token, state, http_status=report.http_status, keep_validators=True
            )

    await ctx.db(op, "record failure", feed.id)


async def _poll_feed(ctx: _Ctx, feed: store.Feed, token: Any) -> FeedReport:
    started = time.perf_counter()
    report = FeedReport(feed_id=feed.id, url=feed.url, outcome=INTERNAL_ERROR)
    try:
        await _poll_feed_inner(ctx, feed, token, report)
    except DatabaseUnavailable as exc:
        # The feed keeps its lease and is due again when it ends: nothing recorded, nothing lost.
        report.outcome, report.reason = DB_UNAVAILABLE, str(exc)
    except Exception as exc:  # a bug or an unforeseen input: recorded, never fatal
        log.exception("feed %s failed unexpectedly", feed.id)
        report.outcome = INTERNAL_ERROR
        report.reason = f"internal error: {type(exc).__name__}: {exc}"[:1000]
        report.new = report.duplicate = report.copies = 0
        try:
            await _write_failure(ctx, feed, token, report)
        except Exception:
            log.exception("could not record the failure of feed %s", feed.id)
    report.elapsed_s = time.perf_counter() - started
    # By the feed's outcome (a fetched HTML page counts as parse_error), with the fetch time.
    ctx.metrics.fetch(report.outcome, report.fetch_s)
    level = logging.INFO if report.outcome in (OK, NOT_MODIFIED) else logging.WARNING
    event(
        log,
        level,
        "feed_polled",
        feed_id=feed.id,
        url=feed.url,
        outcome=report.outcome,
        status=report.http_status,
        new=report.new,
        duplicate=report.duplicate,
        copies=report.copies,
        rejected=report.rejected,
        reason=report.reason,
        elapsed_s=round(report.elapsed_s, 3),
    )
    return report


async def _poll_feed_inner(ctx: _Ctx, feed: store.Feed, token: Any, report: FeedReport) -> None:
    result = await ctx.fetcher.fetch(feed.url, etag=feed.etag, last_modified=feed.last_modified)
    fetched_at = datetime.now(UTC)
    report.fetch_s = result.elapsed_s
    report.http_status = result.status

    if result.outcome.is_error:
        report.outcome, report.reason = result.outcome.value, result.reason
        await _write_failure(ctx, feed, token, report, retry_after_s=result.retry_after_s)
        return

    body_hash = (
        hashlib.sha256(result.body).hexdigest() if result.outcome == FetchOutcome.OK else None
    )
    if result.outcome == FetchOutcome.NOT_MODIFIED or body_hash == feed.body_hash:
        # 304, or the very bytes already stored (a server without validators).
        report.outcome = NOT_MODIFIED
        state = after_success(NOT_MODIFIED, interval_s=feed.interval_s)

        async def op_not_modified() -> None:
            async with ctx.pool.acquire() as conn:
                await store.record_poll(
                    conn,
                    feed.id,
                    token,
                    state,
                    http_status=result.status,
                    etag=result.etag,
                    last_modified=result.last_modified,
                    body_hash=feed.body_hash,
                )

        await ctx.db(op_not_modified, "record not modified", feed.id)
        return

    try:
        parsed = await ctx.parse(result, feed, fetched_at)
    except FeedParseError as exc:
        report.outcome, report.reason = PARSE_ERROR, exc.reason
        await _write_failure(ctx, feed, token, report)
        return

    normalized = parsed.normalized
    report.rejected = sum(normalized.rejected.values())
    report.rejected_reasons = dict(normalized.rejected)
    note = None
    if parsed.problem:
        kept = len(normalized.entries)
        note = f"feed is malformed, {kept} good entries kept: {parsed.problem}"[:1000]
        report.reason = note
    state = after_success(OK, interval_s=feed.interval_s, note=note)

    async def op_store() -> store.StoreCounts:
        async with ctx.pool.acquire() as conn, conn.transaction():
            counts = await store.store_articles(conn, feed.id, normalized.entries)
            await store.record_poll(
                conn,
                feed.id,
                token,
                state,
                http_status=result.status,
                etag=result.etag,
                last_modified=result.last_modified,
                body_hash=body_hash,
                title=parsed.title,
                site_url=parsed.site_url,
                language=parsed.language,
                new_articles=counts.new,
            )
            return counts

    counts = await ctx.db(op_store, "store articles", feed.id)
    report.outcome = OK
    report.new = counts.new
    report.duplicate = counts.duplicate + normalized.duplicates_in_feed
    report.copies = counts.copies
    ctx.metrics.article("new", counts.new)
    ctx.metrics.article("duplicate", report.duplicate)
    ctx.metrics.article("copy", counts.copies)
    ctx.metrics.article("rejected", report.rejected)


# --- one poll -----------------------------------------------------------------------------------


async def poll_once(
    pool: asyncpg.Pool,
    settings: Settings,
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
    ctx = _Ctx(pool, settings, fetcher or Fetcher(settings), metrics or IngestMetrics(), executor)
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
                    await ctx.db(lambda t=token, ids=again: _release(pool, t, ids), "release feeds")
                fresh = [f for f in feeds if f.id not in seen]
                if not fresh:
                    exhausted = True
                for feed in fresh:
                    seen.add(feed.id)
                    in_flight.add(asyncio.create_task(_poll_feed(ctx, feed, token)))
            if not in_flight:
                break
            done, in_flight = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                report = task.result()  # _poll_feed never raises
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


async def _release(pool: asyncpg.Pool, token: Any, ids: list[int]) -> None:
    await pool.execute(
        "UPDATE feeds SET next_due_at = now(), lease_token = NULL "
        "WHERE lease_token = $1 AND id = ANY($2::bigint[])",
        token,
        ids,
    )


# --- the long-running poller ------------------------------------------------------------------


def validate_feed_url(url: str, settings: Settings) -> str | None:
    """Why ``url`` cannot be added as a feed (no DNS lookup), or None."""
    return check_url(
        url,
        allow_private=settings.allow_private_addresses,
        allow_loopback=settings.allow_loopback,
        allow_file=settings.allow_file_urls,
    )


class InvalidFeedURL(ValueError):
    pass


class Poller:
    """The poll loop with its resources; in-process (CLI) or inside the ``FeedPoller`` actor."""

    def __init__(self, settings: Settings, *, pool: asyncpg.Pool | None = None) -> None:
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
        reason = validate_feed_url(url, self.settings)
        if reason:
            raise InvalidFeedURL(reason)
        await self.start()
        feed, created = await store.add_feed(
            self.pool, url, title=title, interval_s=interval_s or self.settings.feed_interval_s
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


@ray.remote(num_cpus=0, max_restarts=-1)
class FeedPoller:
    """The poller as a named, optionally detached, async Ray actor.

        poller = FeedPoller.options(name=settings.poller_actor_name, namespace=RAY_NAMESPACE,
                                    lifetime="detached").remote(settings)
        ray.get(poller.poll_now.remote())

    It starts polling on creation (and again after Ray restarts it: ``max_restarts=-1``);
    ``num_cpus=0`` because it mostly waits on the network and PostgreSQL.
    """

    def __init__(self, settings: Settings, autostart: bool = True) -> None:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
        logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request is noise
        self._poller = Poller(settings)
        self._task: asyncio.Task[None] | None = None
        if autostart:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            try:
                await self._poller.start()
                await self._poller.run_forever()
                return
            except Exception as exc:  # connect gave up: say so and try again
                self._poller.last_error = f"{type(exc).__name__}: {exc}"
                event(log, logging.ERROR, "poller_start_failed", error=self._poller.last_error)
                await asyncio.sleep(self._poller.settings.poll_tick_s)

    async def start(self) -> bool:
        """Start the loop if it is not running; True when it was started now."""
        if self._task is not None and not self._task.done():
            return False
        self._poller._stop.clear()
        self._task = asyncio.get_running_loop().create_task(self._run())
        return True

    async def ready(self) -> dict[str, Any]:
        """Wait until connected to PostgreSQL; the status."""
        await self._poller.start()
        return await self._poller.status()

    async def add_feed(
        self, url: str, interval_s: int | None = None, title: str | None = None
    ) -> dict[str, Any]:
        feed, created = await self._poller.add_feed(url, interval_s=interval_s, title=title)
        return {"feed": asdict(feed), "created": created}

    async def remove_feed(self, url_or_id: str | int) -> dict[str, Any] | None:
        feed = await self._poller.remove_feed(url_or_id)
        return asdict(feed) if feed else None

    async def poll_now(self) -> dict[str, Any]:
        """Poll every due feed once, now; the summary (outcomes and counts)."""
        summary = await self._poller.poll_once()
        return summary.as_dict(reports=True)

    async def status(self) -> dict[str, Any]:
        return await self._poller.status()

    async def stop(self) -> None:
        """Stop polling (in-flight feeds finish) and release the pool; the actor stays."""
        self._poller.request_stop()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, timeout=30)
            except TimeoutError:
                self._task.cancel()
        await self._poller.close()
        self._poller = Poller(self._poller.settings)
