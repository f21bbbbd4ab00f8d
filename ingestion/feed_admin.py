"""Feed administration as a few operations on the database, with their results as plain
models: what ``newsdesk feeds ...`` runs against PostgreSQL and what the HTTP feed routes
(``serving/http/routes/feed_admin.py``) run for a remote ``newsdesk feeds ... --api URL``. Both
sides share these models, so the CLI prints the same thing whichever way it went.

Subscribing stays in ``subscriptions`` (the URL guard), lists in ``feedlist``/``opml``, the SQL
in ``store``; this module only puts them together for an administrator.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from ingestion import store
from ingestion.feedlist import FeedSpec, add_feeds, parse_feeds_yaml
from ingestion.opml import read_opml, render_opml
from ingestion.schedule import DISABLED
from ingestion.settings import IngestionSettings

FeedListFormat = Literal["opml", "yaml"]


class FeedInfo(BaseModel):
    """A feed and its polling state, as an administrator sees it."""

    id: int
    url: str
    title: str | None = None
    category: str | None = None
    status: Literal["active", "quarantined", "disabled"] = Field(
        description="active: polled; quarantined: too many failures in a row (probed rarely); "
        "disabled: never polled (by hand, or 410 Gone)."
    )
    enabled: bool = Field(description="Polled at all (status is not disabled).")
    interval_s: int = Field(description="Seconds between polls.")
    next_poll_at: datetime | None = Field(
        default=None, description="When the poller takes it next; null when disabled."
    )
    last_fetched_at: datetime | None = None
    last_success_at: datetime | None = None
    last_outcome: str | None = Field(
        default=None, description="ok, not_modified, or the kind of failure (http_error, ...)."
    )
    last_http_status: int | None = None
    last_error: str | None = Field(default=None, description="Why the last poll failed.")
    consecutive_failures: int = 0
    articles_total: int = Field(default=0, description="Articles stored from it so far.")
    site_url: str | None = None
    language: str | None = None
    created_at: datetime

    @classmethod
    def of(cls, feed: store.Feed) -> FeedInfo:
        enabled = feed.status != DISABLED
        return cls(
            id=feed.id,
            url=feed.url,
            title=feed.title,
            category=feed.category,
            status=feed.status,  # type: ignore[arg-type]
            enabled=enabled,
            interval_s=feed.interval_s,
            next_poll_at=feed.next_due_at if enabled else None,
            last_fetched_at=feed.last_fetched_at,
            last_success_at=feed.last_success_at,
            last_outcome=feed.last_outcome,
            last_http_status=feed.last_http_status,
            last_error=feed.last_error,
            consecutive_failures=feed.consecutive_failures,
            articles_total=feed.articles_total,
            site_url=feed.site_url,
            language=feed.language,
            created_at=feed.created_at,
        )


class FeedPage(BaseModel):
    """One page of feeds by id; ``next_after`` (when set) asks for the next page."""

    count: int
    feeds: list[FeedInfo]
    next_after: int | None = Field(
        default=None, description="Pass as `after` for the next page; null on the last one."
    )


class Refusal(BaseModel):
    url: str
    reason: str


class ImportReport(BaseModel):
    """What an import did with each feed of the list: a refused one never stops the others."""

    total: int = Field(description="Feed entries in the list.")
    added: list[FeedInfo] = Field(default_factory=list)
    existing: list[FeedInfo] = Field(
        default_factory=list, description="Already subscribed: left as they were."
    )
    refused: list[Refusal] = Field(
        default_factory=list, description="Entries that cannot be feeds, each with the reason."
    )


def read_feed_list(data: bytes, fmt: FeedListFormat) -> tuple[list[FeedSpec], list[Refusal]]:
    """The feeds of an OPML or YAML list and the entries refused while reading it; raises
    ``FeedListError`` when the list as a whole cannot be read."""
    if fmt == "opml":
        specs, refused = read_opml(data)
        return specs, [Refusal(url=u, reason=r) for u, r in refused]
    return parse_feeds_yaml(data), []


async def import_feed_list(
    db: store.Db, data: bytes, fmt: FeedListFormat, settings: IngestionSettings
) -> ImportReport:
    """Subscribe to every feed of an OPML or YAML list (``FeedListError`` when it is not one)."""
    specs, refused = read_feed_list(data, fmt)
    return await subscribe_feed_list(db, specs, refused, settings)


async def subscribe_feed_list(
    db: store.Db, specs: list[FeedSpec], refused: list[Refusal], settings: IngestionSettings
) -> ImportReport:
    """Subscribe to the feeds ``read_feed_list`` read (``refused``: what it left out)."""
    report = await add_feeds(db, specs, settings)
    return ImportReport(
        total=len(specs) + len(refused),
        added=[FeedInfo.of(f) for f in report.added],
        existing=[FeedInfo.of(f) for f in report.existing],
        refused=[*refused, *(Refusal(url=u, reason=r) for u, r in report.refused)],
    )


async def export_opml(db: store.Db) -> bytes:
    """Every feed as an OPML 2.0 document (categories as folders)."""
    return render_opml(await store.list_feeds(db))
