"""How ``newsdesk feeds ...`` reaches the feeds: :class:`FeedAdmin`, on the database
(:class:`DbFeedAdmin`, the default) or on a deployed system's HTTP API (:class:`HttpFeedAdmin`,
``--api URL``: no database access from the laptop). Each command is written once against the
protocol, and both sides answer with ingestion's models (``ingestion.feed_admin``), so a
command prints the same whichever way it went; the HTTP side turns the API's errors back into
the exceptions the database side raises.
"""

from __future__ import annotations

from typing import Any, Protocol, TypeVar

import asyncpg
import httpx
from pydantic import BaseModel, ValidationError

from core import db
from ingestion import store
from ingestion.feed_admin import (
    FeedInfo,
    FeedListFormat,
    FeedPage,
    ImportReport,
    export_opml,
    read_feed_list,
    subscribe_feed_list,
)
from ingestion.feedlist import FeedListError
from ingestion.settings import IngestionSettings
from ingestion.subscriptions import InvalidFeedURL, check_feed_url, subscribe

M = TypeVar("M", bound=BaseModel)
MEDIA_TYPES: dict[str, str] = {"opml": "text/x-opml", "yaml": "application/yaml"}


class FeedAdminError(RuntimeError):
    """The API could not be reached or answered an error; the message says which."""


class FeedAdmin(Protocol):
    """The operations of ``newsdesk feeds``. A feed is named by its id or its URL (``ref``);
    ``None`` answers "no such feed"."""

    async def add(
        self,
        url: str,
        *,
        title: str | None = None,
        category: str | None = None,
        interval_s: int | None = None,
    ) -> tuple[FeedInfo, bool]:
        """(feed, created); raises ``InvalidFeedURL`` for a URL the rules refuse."""
        ...

    async def list_feeds(self, status: str | None = None) -> list[FeedInfo]: ...

    async def remove(self, ref: str) -> FeedInfo | None: ...

    async def set_status(self, ref: str, status: str) -> FeedInfo | None: ...

    async def import_list(self, data: bytes, fmt: FeedListFormat) -> ImportReport:
        """Raises ``FeedListError`` when ``data`` is not a feed list."""
        ...

    async def export_opml(self) -> bytes: ...

    async def aclose(self) -> None: ...


class DbFeedAdmin:
    """On PostgreSQL, with this machine's settings (the URL guard's rules among them). The pool
    opens on first use: a URL the guard refuses is refused without a database."""

    def __init__(self, settings: IngestionSettings) -> None:
        self.settings = settings
        self._pool: asyncpg.Pool | None = None

    async def _db(self) -> asyncpg.Pool:
        if self._pool is None:
            self._pool = await db.create_pool(self.settings)
        return self._pool

    async def add(
        self,
        url: str,
        *,
        title: str | None = None,
        category: str | None = None,
        interval_s: int | None = None,
    ) -> tuple[FeedInfo, bool]:
        check_feed_url(url, self.settings)  # before connecting
        feed, created = await subscribe(
            await self._db(),
            url,
            self.settings,
            title=title,
            interval_s=interval_s,
            category=category,
        )
        return FeedInfo.of(feed), created

    async def list_feeds(self, status: str | None = None) -> list[FeedInfo]:
        return [FeedInfo.of(f) for f in await store.list_feeds(await self._db(), status=status)]

    async def remove(self, ref: str) -> FeedInfo | None:
        return _info(await store.remove_feed(await self._db(), ref))

    async def set_status(self, ref: str, status: str) -> FeedInfo | None:
        return _info(await store.set_feed_status(await self._db(), ref, status))

    async def import_list(self, data: bytes, fmt: FeedListFormat) -> ImportReport:
        specs, refused = read_feed_list(data, fmt)  # before connecting
        return await subscribe_feed_list(await self._db(), specs, refused, self.settings)

    async def export_opml(self) -> bytes:
        return await export_opml(await self._db())

    async def aclose(self) -> None:
        if self._pool is not None:
            await self._pool.close()


def _info(feed: store.Feed | None) -> FeedInfo | None:
    return FeedInfo.of(feed) if feed is not None else None


class HttpFeedAdmin:
    """On a Newsdesk API (``/v1/feeds``), with its API key. The server's rules decide which
    URLs may become feeds, not this machine's."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout_s: float = 60.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        headers = {"X-API-Key": api_key} if api_key else {}
        self._client = httpx.AsyncClient(
            base_url=self.base_url, headers=headers, timeout=timeout_s, transport=transport
        )

    async def _call(
        self, method: str, path: str, *, missing_ok: bool = False, **kwargs: Any
    ) -> httpx.Response | None:
        """The response; None for a 404 when ``missing_ok``; FeedAdminError otherwise."""
        try:
            response = await self._client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise FeedAdminError(
                f"cannot reach the API at {self.base_url}: {type(exc).__name__} {exc}".strip()
            ) from None
        if response.status_code == 404 and missing_ok:
            return None
        if response.is_redirect:
            raise FeedAdminError(
                f"the API at {self.base_url} redirects (HTTP {response.status_code}) to "
                f"{response.headers.get('location')}: give --api the URL it moved to"
            )
        if response.status_code >= 400:
            raise _api_error(response)
        return response

    async def _reply(
        self, model: type[M], method: str, path: str, *, missing_ok: bool = False, **kwargs: Any
    ) -> tuple[M | None, int]:
        """The reply as ``model`` and its status (None, 404 for a missing feed)."""
        response = await self._call(method, path, missing_ok=missing_ok, **kwargs)
        if response is None:
            return None, 404
        try:
            return model.model_validate_json(response.content), response.status_code
        except ValidationError:
            raise FeedAdminError(
                f"{self.base_url}{path} did not answer as the Newsdesk API does (HTTP "
                f"{response.status_code}, {response.headers.get('content-type')}): is "
                f"{self.base_url} the API's base URL?"
            ) from None

    async def _feed_id(self, ref: str) -> int | None:
        if ref.strip().isdigit():
            feed_id = int(ref)
            return feed_id if 1 <= feed_id < 2**63 else None
        page, _ = await self._reply(FeedPage, "GET", "/v1/feeds", params={"url": ref, "limit": 1})
        return page.feeds[0].id if page and page.feeds else None

    async def add(
        self,
        url: str,
        *,
        title: str | None = None,
        category: str | None = None,
        interval_s: int | None = None,
    ) -> tuple[FeedInfo, bool]:
        body = {"url": url, "title": title, "category": category, "interval_s": interval_s}
        feed, status = await self._reply(
            FeedInfo, "POST", "/v1/feeds", json={k: v for k, v in body.items() if v is not None}
        )
        assert feed is not None
        return feed, status == 201

    async def list_feeds(self, status: str | None = None) -> list[FeedInfo]:
        feeds: list[FeedInfo] = []
        after: int | None = 0
        while after is not None:
            params: dict[str, Any] = {"after": after}  # pages of the server's size
            if status is not None:
                params["status"] = status
            page, _ = await self._reply(FeedPage, "GET", "/v1/feeds", params=params)
            assert page is not None
            feeds += page.feeds
            after = page.next_after
        return feeds

    async def _on_feed(self, method: str, ref: str, suffix: str = "") -> FeedInfo | None:
        feed_id = await self._feed_id(ref)
        if feed_id is None:
            return None
        path = f"/v1/feeds/{feed_id}{suffix}"
        return (await self._reply(FeedInfo, method, path, missing_ok=True))[0]

    async def remove(self, ref: str) -> FeedInfo | None:
        return await self._on_feed("DELETE", ref)

    async def set_status(self, ref: str, status: str) -> FeedInfo | None:
        verb = {"active": "enable", "disabled": "disable"}.get(status)
        if verb is None:
            raise ValueError(f"cannot set status {status!r} by hand")
        return await self._on_feed("POST", ref, f"/{verb}")

    async def import_list(self, data: bytes, fmt: FeedListFormat) -> ImportReport:
        report, _ = await self._reply(
            ImportReport,
            "POST",
            "/v1/feeds/import",
            content=data,
            headers={"Content-Type": MEDIA_TYPES[fmt]},
        )
        assert report is not None
        return report

    async def export_opml(self) -> bytes:
        response = await self._call("GET", "/v1/feeds/export.opml")
        assert response is not None
        return response.content

    async def aclose(self) -> None:
        await self._client.aclose()


def _api_error(response: httpx.Response) -> Exception:
    """The exception the database side would have raised, else a FeedAdminError."""
    try:
        error = response.json()["error"]
        code, message = str(error["code"]), str(error["message"])
    except (ValueError, KeyError, TypeError):
        code, message = "http_error", response.text[:300] or response.reason_phrase
    if code in ("invalid_feed_url", "address_refused"):
        details = error.get("details") or [{}]
        return InvalidFeedURL(details[0].get("msg") or message)
    if code.startswith("malformed_") and response.status_code == 400:
        return FeedListError(message)
    if response.status_code == 401:
        return FeedAdminError(
            f"the API refused the request (401): {message} "
            "(give the key with --api-key or NEWSDESK_API_KEY)"
        )
    return FeedAdminError(f"the API answered {response.status_code} {code}: {message}")
