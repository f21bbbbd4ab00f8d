"""The API's cross-cutting concerns, each its own ASGI middleware (as in Starlette itself).

App-wide, outermost first (:func:`serving.http.app.build_api` installs them):

- :class:`RequestIdMiddleware`: every request gets an id (the client's ``X-Request-ID`` when
  well-formed, else a new one), kept in ``request.state`` for error bodies and echoed in the
  response; behind Serve's HTTP proxy the proxy makes and echoes it, so the id is taken as is;
- :class:`RequestMetricsMiddleware`: counts and times each request by route and status
  (``/v1/stats``, ``newsdesk_http_*`` metrics); the digest page's files only when they fail;
- :class:`InternalErrorMiddleware`: an unexpected exception becomes a logged 500 in the API's
  error shape (Starlette's own error middleware would answer plain text and re-raise).

Per route (:mod:`serving.http.routes` says which):

- :class:`ApiKeyMiddleware`: write and admin routes need the API key, when one is configured;
- :class:`BodyLimitMiddleware`: routes that read a body refuse one over the size limit (413),
  by its ``Content-Length`` or, without one, by counting what arrives.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
import uuid
from collections import Counter
from typing import Any

from starlette.datastructures import Headers, MutableHeaders
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.http.errors import ApiError, error_response
from serving.summaries import metrics

log = logging.getLogger(__name__)

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
UNMATCHED = "unmatched"  # the route name of requests no API route took (404, 405)


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp, *, behind_serve_proxy: bool) -> None:
        self.app = app
        self.behind_serve_proxy = behind_serve_proxy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = Headers(scope=scope).get("x-request-id", "")
        if self.behind_serve_proxy and given:
            request_id = given[:200]  # Serve's proxy made it (or passed the client's on)
        else:
            request_id = given if _REQUEST_ID.match(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        if self.behind_serve_proxy:  # the proxy echoes it in the response itself
            await self.app(scope, receive, send)
            return

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)["X-Request-ID"] = request_id
            await send(message)

        await self.app(scope, receive, send_with_id)


def route_name(scope: Scope, names: frozenset[str]) -> str:
    """The API route that took this request, else UNMATCHED (no route, another method, or
    a file of the digest page)."""
    route = scope.get("route")
    if isinstance(route, Route) and route.name in names:
        if route.methods is None or scope["method"] in route.methods:
            return route.name
    return UNMATCHED


class RequestStats:
    """Requests by (route, status) and latency windows by route, for ``/v1/stats``."""

    def __init__(self) -> None:
        self.started_at = time.time()
        self.requests: Counter[tuple[str, int]] = Counter()
        self.latency = metrics.LatencyWindow()

    def observe(self, route: str, method: str, status: int, elapsed_ms: float) -> None:
        self.requests[(route, status)] += 1
        self.latency.observe(route, elapsed_ms)
        metrics.http_requests().inc(
            1, tags={"route": route, "method": method, "status": str(status)}
        )
        metrics.http_latency().observe(elapsed_ms, tags={"route": route})

    def summary(self) -> dict[str, Any]:
        by_route: dict[str, dict[str, int]] = {}
        for (route, status), count in sorted(self.requests.items()):
            by_route.setdefault(route, {})[str(status)] = count
        return {
            "uptime_s": round(time.time() - self.started_at, 1),
            "requests": by_route,
            "latency": self.latency.summary(),
        }


class RequestMetricsMiddleware:
    """Records each API request when its response starts (a stream: when its first byte
    goes, not when the last does)."""

    def __init__(self, app: ASGIApp, *, stats: RequestStats, routes: frozenset[str]) -> None:
        self.app = app
        self.stats = stats
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()

        async def observed_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                name = route_name(scope, self.routes)
                status = int(message["status"])
                if name != UNMATCHED or status >= 400:  # the digest page's files: errors only
                    elapsed_ms = (time.perf_counter() - start) * 1000
                    self.stats.observe(name, scope["method"], status, elapsed_ms)
            await send(message)

        await self.app(scope, receive, observed_send)


class InternalErrorMiddleware:
    def __init__(self, app: ASGIApp, *, routes: frozenset[str]) -> None:
        self.app = app
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked_send)
        except Exception:
            if started:  # a stream failed midway: nothing else can be sent
                raise
            request_id = scope.get("state", {}).get("request_id", "")
            where = route_name(scope, self.routes)
            log.exception("unhandled error in %s (request %s)", where, request_id)
            error = ApiError(500, "internal_error", "unexpected server error; see the logs")
            await error_response(error, request_id)(scope, receive, send)


class ApiKeyMiddleware:
    """The key in ``X-API-Key`` (or ``Authorization: Bearer``); no key configured: open."""

    def __init__(self, app: ASGIApp, *, api_key: str | None) -> None:
        self.app = app
        self.api_key = api_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.api_key:
            headers = Headers(scope=scope)
            given = headers.get("x-api-key")
            if given is None:
                auth = headers.get("authorization", "")
                if auth.lower().startswith("bearer "):
                    given = auth[7:].strip()
            if not given or not secrets.compare_digest(given.encode(), self.api_key.encode()):
                raise ApiError(
                    401,
                    "unauthorized",
                    "this route needs the API key in the X-API-Key header",
                    headers={"WWW-Authenticate": "ApiKey"},
                )
        await self.app(scope, receive, send)


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = self.max_bytes
        declared = Headers(scope=scope).get("content-length")
        if declared is not None:
            if not declared.isdigit():
                raise ApiError(400, "bad_request", "Content-Length is not a number")
            if int(declared) > limit:
                raise ApiError(
                    413, "body_too_large", f"body of {declared} bytes is over the {limit} limit"
                )
        size = 0

        async def counted_receive() -> Message:
            nonlocal size
            message = await receive()
            if message["type"] == "http.request":
                size += len(message.get("body", b""))
                if size > limit:
                    raise ApiError(413, "body_too_large", f"body is over the {limit} byte limit")
            return message

        await self.app(scope, counted_receive, send)
