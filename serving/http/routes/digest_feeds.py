"""The digest as feeds: ``GET /feeds/digest.rss`` (RSS 2.0), ``/feeds/digest.atom``
(Atom 1.0) and ``/feeds/digest.json`` (JSON Feed 1.1): the stories of ``GET /v1/stories``,
with its filters, for feed readers. Public, like ``/v1/stories``.

Caching: one cheap query fingerprints the stories of the window
(:func:`serving.digest.store.window_fingerprint`); the strong ETag is a hash of it, the
format, the feed's URL and the ranking knobs, so a matching ``If-None-Match`` is answered 304
before anything is ranked or rendered. The fingerprint is read before the listing: a story
that changes in between gives the new content under the old tag, and the next request a new
tag (never the old content under a new one). ``Last-Modified`` is the newest item's
``updated``; ``If-Modified-Since`` (used only without ``If-None-Match``) is answered 304 at
once when nothing in the window changed since, else after the listing when no item of this
feed did.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from starlette.requests import Request
from starlette.responses import Response

from serving.digest.formats import EPOCH, FORMATS, RENDERERS, absolute, digest_feed
from serving.digest.schemas import FeedQuery, JsonFeed
from serving.digest.store import stories_updated, window_fingerprint
from serving.http.conditional import (
    etag_hit,
    http_date,
    modified_since,
    not_modified,
    strong_etag,
    unchanged_since,
)
from serving.http.openapi import RouteDoc
from serving.http.routes.route import ERRORS, ApiRoute, RouteContext, query_of
from serving.stories.schemas import StoryQuery

DEFAULT_WINDOW_H = 24.0
# bump when the rendering changes: the ETags of unchanged data must change with it
RENDER_VERSION = "digest-feeds/1"
NOT_MODIFIED = (None, "Not modified: the If-None-Match or If-Modified-Since validator holds.")


class DigestFeedRoutes:
    def __init__(self, ctx: RouteContext) -> None:
        self.ctx = ctx

    def table(self) -> list[ApiRoute]:
        described = {
            "rss": ("RSS 2.0", None),
            "atom": ("Atom 1.0", None),
            "json": ("JSON Feed 1.1", JsonFeed),
        }
        return [
            ApiRoute(
                f"digest_{fmt}",
                self._handler(fmt),
                RouteDoc(
                    "GET",
                    f"/feeds/digest.{fmt}",
                    f"The ranked stories of /v1/stories as {name}, one item per story with a "
                    "stable id and an updated time that moves when the story grows; ETag and "
                    "Last-Modified for conditional requests.",
                    query=FeedQuery,
                    responses={
                        200: (model, f"The digest as {name}."),
                        304: NOT_MODIFIED,
                        422: ERRORS[422],
                        503: ERRORS[503],
                    },
                    media_type=FORMATS[fmt],
                    tags=("feeds",),
                ),
            )
            for fmt, (name, model) in described.items()
        ]

    def _handler(self, fmt: str) -> Callable[[Request], Awaitable[Response]]:
        async def handler(request: Request) -> Response:
            return await self.feed(request, fmt)

        return handler

    def _base_url(self, request: Request) -> str:
        return self.ctx.config.public_url or str(request.base_url)

    async def feed(self, request: Request, fmt: str) -> Response:
        config = self.ctx.config
        query = query_of(request, FeedQuery, max_limit=config.max_list_limit)
        since = query.since
        if since is None:
            since = datetime.now(UTC) - timedelta(hours=query.window or DEFAULT_WINDOW_H)
        elif since.tzinfo is None:
            since = since.replace(tzinfo=UTC)
        base = self._base_url(request)
        qs = f"?{request.url.query}" if request.url.query else ""
        urls = {f: absolute(base, f"/feeds/digest.{f}") + qs for f in FORMATS}

        pool = await self.ctx.backend.database()
        fingerprint = await window_fingerprint(pool, since)
        knobs = (config.rank_half_life_h, config.story_source_boost, config.story_source_boost_cap)
        etag = strong_etag(RENDER_VERSION, fmt, urls[fmt], repr(knobs), fingerprint.key())
        headers = {"ETag": etag, "Cache-Control": f"public, max-age={config.feeds_max_age_s}"}
        if etag_hit(request, etag):
            return not_modified(headers)
        ims = modified_since(request)
        if unchanged_since(fingerprint.changed_at, ims):
            return not_modified(headers)

        listing = await self.ctx.backend.list_stories(
            StoryQuery(**query.model_dump(exclude={"since", "window"}), since=since)
        )
        updated = await stories_updated(pool, [s.id for s in listing.stories])
        feed = digest_feed(
            listing,
            updated,
            base_url=base,
            self_url=urls[fmt],
            alternates=urls,
            filters={
                "topic": query.topic,
                "source": query.source,
                "importance ≥": query.min_importance,
            },
            empty_updated=fingerprint.changed_at,
        )
        if feed.updated != EPOCH:
            headers["Last-Modified"] = http_date(feed.updated)
            if unchanged_since(feed.updated, ims):
                return not_modified(headers)
        return Response(
            RENDERERS[fmt](feed),
            media_type=f"{FORMATS[fmt]}; charset=utf-8",
            headers=headers,
        )
