"""Feed administration over HTTP: what ``newsdesk feeds ... --api URL`` calls, so a deployed
system's feeds are managed without reaching its database from the laptop.

``GET /v1/feeds`` (state of each feed, paged by id), ``GET /v1/feeds/{id}``, ``POST /v1/feeds``
(201 new, 200 already subscribed), ``DELETE /v1/feeds/{id}``, ``POST /v1/feeds/{id}/enable`` and
``/disable`` (the CLI's verbs: one action each, nothing else to send), ``POST /v1/feeds/import``
(an OPML or YAML body: a report per feed) and ``GET /v1/feeds/export.opml``. Every route needs the
API key. The fixed paths are listed before ``/v1/feeds/{feed_id}``, so ``export.opml`` is never
taken for an id.

The routes only parse, call ingestion (``ingestion.feed_admin``, ``subscriptions``, ``store``:
the SQL and the URL rules live there, shared with the CLI) and answer. This is the one serving
module that imports ingestion (``tests/test_import_graph.py`` names it): it serves ingestion's
feed operations over the API.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response

from ingestion import store
from ingestion.feed_admin import (
    FeedInfo,
    FeedListFormat,
    FeedPage,
    ImportReport,
    export_opml,
    import_feed_list,
)
from ingestion.feedlist import FeedListError
from ingestion.schedule import ACTIVE, DISABLED
from ingestion.settings import IngestionSettings
from ingestion.subscriptions import InvalidFeedURL, subscribe
from serving.http.errors import ApiError, validate
from serving.http.openapi import RouteDoc
from serving.http.routes.route import (
    ERRORS,
    WRITE_ERRORS,
    ApiRoute,
    Handler,
    RouteContext,
    json_body,
    json_response,
    positive_id,
    query_of,
)
from serving.http.schemas import ErrorResponse

DEFAULT_PAGE = 100
OPML_MEDIA_TYPE = "text/x-opml"
# the body's Content-Type -> the list format it holds
IMPORT_MEDIA_TYPES: dict[str, FeedListFormat] = {
    "text/x-opml": "opml",
    "application/xml": "opml",
    "text/xml": "opml",
    "application/x-opml": "opml",
    "application/yaml": "yaml",
    "application/x-yaml": "yaml",
    "text/yaml": "yaml",
}


class FeedListQuery(BaseModel):
    """Query parameters of ``GET /v1/feeds``."""

    model_config = ConfigDict(extra="forbid")

    status: Literal["active", "quarantined", "disabled"] | None = Field(
        default=None, description="Only feeds in this state."
    )
    url: str | None = Field(
        default=None, min_length=1, max_length=4096, description="Only the feed with this URL."
    )
    after: int = Field(default=0, ge=0, description="Feeds with an id above this (paging).")
    limit: int | None = Field(
        default=None,
        ge=1,
        description=f"Feeds per page (default {DEFAULT_PAGE}, or the server's largest limit).",
    )


class FeedCreate(BaseModel):
    """Body of ``POST /v1/feeds``."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    url: str = Field(min_length=1, max_length=4096, description="http(s) or file:// feed URL.")
    title: str | None = Field(default=None, max_length=1000, description="Name shown for it.")
    category: str | None = Field(
        default=None, max_length=1000, description='Its folder ("World", "World/Europe").'
    )
    interval_s: int | None = Field(
        default=None, ge=10, description="Seconds between polls (default: the server's)."
    )


class FeedRoutes:
    def __init__(self, ctx: RouteContext) -> None:
        self.ctx = ctx
        self.rules = feed_rules(ctx.config.settings)

    def table(self) -> list[ApiRoute]:
        return [
            ApiRoute(
                "feeds",
                self.list_feeds,
                RouteDoc(
                    "GET",
                    "/v1/feeds",
                    "Feeds with their polling state (status, last fetch, last error and its "
                    "reason, failures in a row, next poll, articles), by id, a page at a time.",
                    query=FeedListQuery,
                    responses={
                        200: (FeedPage, "A page of feeds."),
                        401: ERRORS[401],
                        422: ERRORS[422],
                    },
                    auth=True,
                    tags=("feeds",),
                ),
            ),
            ApiRoute(
                "feed_add",
                self.add_feed,
                RouteDoc(
                    "POST",
                    "/v1/feeds",
                    "Subscribe to a feed, by the same rules as `newsdesk feeds add` (the URL guard "
                    "refuses private and loopback addresses unless the server allows them).",
                    request=FeedCreate,
                    responses={
                        200: (FeedInfo, "Already subscribed: the feed, unchanged."),
                        201: (FeedInfo, "Subscribed: the new feed."),
                        **WRITE_ERRORS,
                    },
                    auth=True,
                    tags=("feeds",),
                ),
                reads_body=True,
            ),
            ApiRoute(
                "feeds_import",
                self.import_feeds,
                RouteDoc(
                    "POST",
                    "/v1/feeds/import",
                    "Subscribe to every feed of an OPML body (Content-Type text/x-opml or "
                    "application/xml; application/yaml for a feeds YAML): added, already "
                    "subscribed and refused (with the reason), per feed.",
                    responses={
                        200: (ImportReport, "What became of each feed."),
                        400: (ErrorResponse, "Not an OPML (or YAML) feed list: the reason."),
                        401: ERRORS[401],
                        413: ERRORS[413],
                        415: (ErrorResponse, "A Content-Type that is not OPML, XML or YAML."),
                    },
                    auth=True,
                    tags=("feeds",),
                ),
                reads_body=True,
            ),
            ApiRoute(
                "feeds_export",
                self.export_feeds,
                RouteDoc(
                    "GET",
                    "/v1/feeds/export.opml",
                    "Every feed as OPML 2.0, categories as folders (importable here again).",
                    responses={200: (None, "The OPML document."), 401: ERRORS[401]},
                    auth=True,
                    media_type=OPML_MEDIA_TYPE,
                    tags=("feeds",),
                ),
            ),
            _on_one_feed("feed", self.get_feed, "GET", "", "One feed with its polling state."),
            _on_one_feed(
                "feed_remove",
                self.remove_feed,
                "DELETE",
                "",
                "Unsubscribe: delete the feed and its articles; answers the deleted feed.",
            ),
            _on_one_feed(
                "feed_enable",
                self.enable_feed,
                "POST",
                "/enable",
                "Poll a disabled or quarantined feed again: failures reset, due now.",
            ),
            _on_one_feed(
                "feed_disable",
                self.disable_feed,
                "POST",
                "/disable",
                "Stop polling a feed (its articles stay).",
            ),
        ]

    async def list_feeds(self, request: Request) -> Response:
        query = query_of(request, FeedListQuery, max_limit=self.ctx.config.max_list_limit)
        limit = query.limit or min(DEFAULT_PAGE, self.ctx.config.max_list_limit)
        db = await self.ctx.backend.database()
        # one more than asked: whether another page follows
        feeds = await store.list_feeds(
            db, status=query.status, url=query.url, after_id=query.after, limit=limit + 1
        )
        page, more = feeds[:limit], len(feeds) > limit
        body = FeedPage(
            count=len(page),
            feeds=[FeedInfo.of(f) for f in page],
            next_after=page[-1].id if more else None,
        )
        return json_response(body)

    async def get_feed(self, request: Request) -> Response:
        feed_id = positive_id(request, "feed_id", "feed")
        feed = await store.get_feed(await self.ctx.backend.database(), feed_id)
        return json_response(FeedInfo.of(_found(feed, feed_id)))

    async def add_feed(self, request: Request) -> Response:
        body = validate(FeedCreate, await json_body(request))
        db = await self.ctx.backend.database()
        try:
            feed, created = await subscribe(
                db,
                body.url,
                self.rules,
                title=body.title,
                interval_s=body.interval_s,
                category=body.category,
            )
        except InvalidFeedURL as exc:
            reason = str(exc)
            code = "address_refused" if reason.startswith("refused ") else "invalid_feed_url"
            raise ApiError(
                422,
                code,
                f"cannot add {body.url}: {reason}",
                details=[{"loc": ["body", "url"], "msg": reason, "type": code}],
            ) from None
        return json_response(FeedInfo.of(feed), status=201 if created else 200)

    async def remove_feed(self, request: Request) -> Response:
        feed_id = positive_id(request, "feed_id", "feed")
        feed = await store.remove_feed(await self.ctx.backend.database(), feed_id)
        return json_response(FeedInfo.of(_found(feed, feed_id)))

    async def _set_status(self, request: Request, status: str) -> Response:
        feed_id = positive_id(request, "feed_id", "feed")
        feed = await store.set_feed_status(await self.ctx.backend.database(), feed_id, status)
        return json_response(FeedInfo.of(_found(feed, feed_id)))

    async def enable_feed(self, request: Request) -> Response:
        return await self._set_status(request, ACTIVE)

    async def disable_feed(self, request: Request) -> Response:
        return await self._set_status(request, DISABLED)

    async def import_feeds(self, request: Request) -> Response:
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        fmt = IMPORT_MEDIA_TYPES.get(media)
        if fmt is None:
            raise ApiError(
                415,
                "unsupported_media_type",
                f"Content-Type {media or '(none)'!r} is not a feed list; send OPML as "
                f"{OPML_MEDIA_TYPE} or application/xml (a feeds YAML as application/yaml)",
            )
        data = await request.body()
        if not data.strip():
            raise ApiError(400, f"malformed_{fmt}", "the request body is empty; send the list")
        db = await self.ctx.backend.database()
        try:
            report = await import_feed_list(db, data, fmt, self.rules)
        except FeedListError as exc:
            raise ApiError(400, f"malformed_{fmt}", str(exc)) from None
        return json_response(report)

    async def export_feeds(self, request: Request) -> Response:
        document = await export_opml(await self.ctx.backend.database())
        return Response(
            document,
            media_type=OPML_MEDIA_TYPE,
            headers={"Content-Disposition": 'attachment; filename="newsdesk-feeds.opml"'},
        )


def _on_one_feed(name: str, handler: Handler, method: str, suffix: str, summary: str) -> ApiRoute:
    """A route on ``/v1/feeds/{feed_id}{suffix}`` answering the feed (after the change)."""
    return ApiRoute(
        name,
        handler,
        RouteDoc(
            method,
            "/v1/feeds/{feed_id}" + suffix,
            summary,
            path_params={"feed_id": "The feed's id."},
            responses={
                200: (FeedInfo, "The feed."),
                401: ERRORS[401],
                404: (ErrorResponse, "No feed with this id."),
                422: (ErrorResponse, "Not a valid id."),
            },
            auth=True,
            tags=("feeds",),
        ),
        reads_body=method != "GET",
    )


def feed_rules(settings: object) -> IngestionSettings:
    """Ingestion's rules for subscribing (the URL guard, the default interval): the settings'
    ingestion section when they hold one (one process under the composite Settings); a Serve
    replica receives the serving section only and reads them from its NEWSDESK_* environment,
    as the poller does on the same cluster."""
    if isinstance(settings, IngestionSettings):
        return settings.section(IngestionSettings)
    return IngestionSettings()


def _found(feed: store.Feed | None, feed_id: int) -> store.Feed:
    if feed is None:
        raise ApiError(404, "not_found", f"no feed with id {feed_id}")
    return feed
