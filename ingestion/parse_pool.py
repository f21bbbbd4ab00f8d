"""Parsing and normalizing a fetched body, in the event loop's process or in worker processes.

Parsing is pure CPU work (feedparser, HTML to text) and holds the GIL; with
``parse_workers`` > 0 it runs in a pool of spawned processes so the poller's event loop keeps
fetching meanwhile. ``parse_and_normalize`` is the pure function both paths run.
"""

from __future__ import annotations

import asyncio
import multiprocessing
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ingestion.normalizer import Normalized, normalize_entries
from ingestion.parser import ParsedFeed, parse_feed
from ingestion.settings import IngestionSettings


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


def make_parse_executor(settings: IngestionSettings) -> Executor | None:
    """Worker processes for parsing (``parse_workers`` > 0), else None (parse in-process)."""
    if settings.parse_workers <= 0:
        return None
    # spawn, not fork: the poller may run inside Ray, whose threads do not survive a fork.
    return ProcessPoolExecutor(
        max_workers=settings.parse_workers, mp_context=multiprocessing.get_context("spawn")
    )


async def parse_with(
    executor: Executor | None, body: bytes, headers: dict[str, str], **kwargs: Any
) -> ParseOutput:
    """``parse_and_normalize`` in ``executor``'s workers, or here when it is None."""
    if executor is None:
        return parse_and_normalize(body, headers, **kwargs)
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(executor, _parse_in_worker, body, headers, kwargs)


def _parse_in_worker(body: bytes, headers: dict[str, str], kwargs: dict[str, Any]) -> ParseOutput:
    # run_in_executor passes positional arguments only: the keywords travel as one dict.
    return parse_and_normalize(body, headers, **kwargs)
