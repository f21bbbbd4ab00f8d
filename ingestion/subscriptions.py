"""Subscribing to a feed: the one place that decides which URLs may become feeds and with
which defaults. The CLI (``newsdesk feeds add``), feed lists (OPML, ``configs/feeds.yaml``)
and the poller (``FeedPoller.add_feed``) all subscribe through ``subscribe``.
"""

from __future__ import annotations

from core.urlguard import check_url
from ingestion import store
from ingestion.settings import IngestionSettings


class InvalidFeedURL(ValueError):
    """A URL the guard refuses as a feed; the message says why."""


def check_feed_url(url: str, settings: IngestionSettings) -> None:
    """Raise ``InvalidFeedURL`` when ``url`` cannot be a feed (no DNS lookup).

    Callers that must connect to PostgreSQL first call it before connecting, so a bad URL is
    refused at once even while the database is away.
    """
    reason = check_url(
        url,
        allow_private=settings.allow_private_addresses,
        allow_loopback=settings.allow_loopback,
        allow_file=settings.allow_file_urls,
    )
    if reason:
        raise InvalidFeedURL(reason)


async def subscribe(
    db: store.Db,
    url: str,
    settings: IngestionSettings,
    *,
    title: str | None = None,
    interval_s: int | None = None,
    category: str | None = None,
) -> tuple[store.Feed, bool]:
    """(feed, created): subscribe to ``url``; an existing feed is returned unchanged.

    Raises ``InvalidFeedURL`` for a URL the guard refuses; the interval defaults to
    ``feed_interval_s``.
    """
    check_feed_url(url, settings)
    return await store.add_feed(
        db,
        url,
        title=title,
        interval_s=interval_s or settings.feed_interval_s,
        category=(category or "").strip() or None,
    )
