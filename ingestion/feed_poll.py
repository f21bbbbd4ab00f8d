"""Polling one claimed feed: fetch, then not-modified, failure or parse + store, recorded on the
feed together with its next due time.

``poll_feed`` is the use case; it never raises. A feed's own failures (network, HTTP, parse,
a bug) become a recorded reason on that feed. PostgreSQL going away does not: every database
step waits through ``with_db_retry`` with the fetched body kept in memory, and if it stays
away the feed keeps its lease and is due again when the lease ends. Articles and the feed's
new validators are written in one transaction, so nothing is lost or stored twice.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import asyncpg

from ingestion import store
from ingestion.db_retry import DatabaseUnavailable, with_db_retry
from ingestion.fetcher import Fetcher, FetchOutcome
from ingestion.logs import event
from ingestion.metrics import IngestMetrics
from ingestion.outcomes import (
    DB_UNAVAILABLE,
    INTERNAL_ERROR,
    NOT_MODIFIED,
    OK,
    PARSE_ERROR,
    FeedReport,
)
from ingestion.parse_pool import parse_with
from ingestion.parser import FeedParseError
from ingestion.schedule import after_failure, after_success
from ingestion.settings import IngestionSettings

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class PollContext:
    """What polling a feed needs, shared by every feed of a poll."""

    pool: asyncpg.Pool
    settings: IngestionSettings
    fetcher: Fetcher
    metrics: IngestMetrics
    executor: Executor | None  # parse workers, or None: parse in the event loop's process

    async def db(self, op: Callable[[], Awaitable[T]], what: str, feed_id: int | None = None) -> T:
        return await with_db_retry(
            op,
            timeout_s=self.settings.db_retry_timeout_s,
            what=what,
            pool=self.pool,
            feed_id=feed_id,
        )


async def poll_feed(ctx: PollContext, feed: store.Feed, token: Any) -> FeedReport:
    """Poll ``feed`` (claimed under lease ``token``) once; its report. Never raises."""
    started = time.perf_counter()
    report = FeedReport(feed_id=feed.id, url=feed.url, outcome=INTERNAL_ERROR)
    try:
        await _fetch_parse_store(ctx, feed, token, report)
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


async def _write_failure(
    ctx: PollContext,
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


async def _fetch_parse_store(
    ctx: PollContext, feed: store.Feed, token: Any, report: FeedReport
) -> None:
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
        parsed = await parse_with(
            ctx.executor,
            result.body,
            result.headers,
            base_url=result.final_url,
            feed_id=feed.id,
            source=feed.title,
            fetched_at=fetched_at,
            max_chars=ctx.settings.max_article_chars,
        )
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
