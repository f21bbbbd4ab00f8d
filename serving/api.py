"""The HTTP API: routes, validation, errors, API key, request ids, metrics (Starlette).

:func:`build_api` returns a plain Starlette app over an :class:`ApiBackend`. The Ingress
deployment mounts it with DeploymentHandles behind the backend; tests and the benchmark's
bare baseline run the same app in-process. Nothing here knows about Ray.

Bad input never reaches the model and never gets a 500: malformed JSON (400), a body over
``api_max_body_bytes`` (413), missing/wrong fields or unknown query parameters (422, with the
fields), too many articles (422), an unknown article id (404), no or a wrong API key (401).
Each error reply is an :class:`~serving.schemas.ErrorResponse` carrying the request id.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import secrets
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel, SecretStr, ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ingestion.article import Article
from ingestion.settings import Settings
from serving import metrics, web
from serving.lookup import Outcome, SummarizerUnavailable
from serving.openapi import RouteDoc, openapi_spec
from serving.result import ArticleError, Result
from serving.schemas import (
    ArticleDetail,
    ArticleItem,
    ArticleList,
    ArticleListQuery,
    BatchRequest,
    BatchResponse,
    Check,
    ErrorInfo,
    ErrorResponse,
    FailureInfo,
    Health,
    Readiness,
    StreamLine,
)
from serving.store import StoredArticle
from serving.stories.schemas import StoryList, StoryQuery

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)
_ListQueryT = TypeVar("_ListQueryT", ArticleListQuery, StoryQuery)
MAX_ARTICLE_ID = 2**63 - 1
DEFAULT_LIST_WINDOW = timedelta(days=7)
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
# Engine codes that mean "this input cannot be summarized": a client error, not a server one.
CLIENT_ERROR_CODES = {"empty_input", "invalid_input", "generation_failed"}


class ApiBackend(Protocol):
    """What the routes need; the Ingress implements it with DeploymentHandles."""

    async def startup(self) -> None: ...

    async def shutdown(self) -> None: ...

    async def summarize(self, article: Article) -> tuple[Outcome, str]:
        """The outcome and its source (local, redis, db, model). Raises SummarizerUnavailable."""
        ...

    async def list_articles(
        self,
        *,
        since: datetime,
        min_importance: float | None,
        topic: str | None,
        limit: int,
        half_life_h: float,
    ) -> list[StoredArticle]: ...

    async def get_article(self, article_id: int) -> StoredArticle | None: ...

    async def list_stories(self, query: StoryQuery) -> StoryList:
        """Ranked stories (serving.stories.ranking.list_stories with the settings' ranking)."""
        ...

    async def readiness(self) -> tuple[dict[str, Check], dict[str, str]]:
        """Gating checks (all must pass) and informational states."""
        ...

    async def stats(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class ApiConfig:
    api_key: str | None = None
    max_body_bytes: int = 8 * 1024 * 1024
    max_batch_articles: int = 64
    max_list_limit: int = 200
    rank_half_life_h: float = 24.0
    summarizer_timeout_s: float = 900.0
    # Behind Serve's HTTP proxy: it gives each request an X-Request-ID (or passes the client's
    # on) and echoes it in the response itself; the app uses that id and adds no header.
    behind_serve_proxy: bool = False

    @classmethod
    def from_settings(cls, settings: Settings) -> ApiConfig:
        key = settings.api_key
        return cls(
            api_key=key.get_secret_value() if isinstance(key, SecretStr) else key,
            max_body_bytes=settings.api_max_body_bytes,
            max_batch_articles=settings.api_max_batch_articles,
            max_list_limit=settings.api_max_list_limit,
            rank_half_life_h=settings.api_rank_half_life_h,
            summarizer_timeout_s=settings.summarizer_timeout_s,
        )


class BackendUnavailable(RuntimeError):
    """A part the route needs (database, Summarizer) is down: 503, not a client error."""


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        details: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.headers = headers or {}


def error_response(error: ApiError, request_id: str) -> Response:
    body = ErrorResponse(
        error=ErrorInfo(
            code=error.code, message=error.message, request_id=request_id, details=error.details
        )
    )
    return Response(
        body.model_dump_json(exclude_none=True),
        status_code=error.status,
        media_type="application/json",
        headers=error.headers,
    )


def _request_id(request: Request, *, trust_header: bool) -> str:
    given = request.headers.get("x-request-id", "")
    if trust_header and given:
        return given[:200]  # Serve's proxy made it (or passed the client's on)
    return given if _REQUEST_ID.match(given) else uuid.uuid4().hex


def _validation_error(exc: ValidationError, prefix: tuple[str | int, ...] = ()) -> ApiError:
    details = [
        {"loc": [*prefix, *e["loc"]], "msg": e["msg"], "type": e["type"]}
        for e in exc.errors(include_url=False, include_input=False, include_context=False)
    ]
    first = details[0]
    where = ".".join(str(p) for p in first["loc"]) or "body"
    more = f" (and {len(details) - 1} more)" if len(details) > 1 else ""
    return ApiError(422, "validation_error", f"{where}: {first['msg']}{more}", details=details)


def _validate(model: type[M], data: Any, prefix: tuple[str | int, ...] = ()) -> M:
    if not isinstance(data, dict):
        raise ApiError(
            422, "validation_error", f"the body must be a JSON object, not {type(data).__name__}"
        )
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise _validation_error(exc, prefix) from None


class Api:
    """The routes over one backend; ``app`` is the Starlette application."""

    def __init__(self, backend: ApiBackend, config: ApiConfig) -> None:
        self.backend = backend
        self.config = config
        self.latency = metrics.LatencyWindow()
        self.requests: Counter[tuple[str, int]] = Counter()
        self.started_at = time.time()
        self.routes_doc = _route_docs(config)
        self.openapi = openapi_spec(
            self.routes_doc,
            title="Newsdesk",
            version="0.1.0",
            description="News articles in, faithful short summaries with an importance "
            "rating (0-100) out.",
        )
        ep = self._endpoint
        self.app = Starlette(
            routes=[
                Route(
                    "/v1/summarize", ep("summarize", self.summarize, auth=True), methods=["POST"]
                ),
                Route(
                    "/v1/summarize/batch",
                    ep("summarize_batch", self.summarize_batch, auth=True),
                    methods=["POST"],
                ),
                Route(
                    "/v1/summarize/stream",
                    ep("summarize_stream", self.summarize_stream, auth=True),
                    methods=["POST"],
                ),
                Route("/v1/articles", ep("articles", self.list_articles), methods=["GET"]),
                Route(
                    "/v1/articles/{article_id}",
                    ep("article", self.get_article),
                    methods=["GET"],
                ),
                Route("/v1/stories", ep("stories", self.list_stories), methods=["GET"]),
                Route("/v1/stats", ep("stats", self.stats, auth=True), methods=["GET"]),
                Route("/healthz", ep("healthz", self.healthz), methods=["GET"]),
                Route("/readyz", ep("readyz", self.readyz), methods=["GET"]),
                Route("/openapi.json", ep("openapi", self.openapi_json), methods=["GET"]),
                *web.routes(),  # the digest page at / and its assets under /web/
            ],
            exception_handlers={HTTPException: self._http_exception},
            lifespan=self._lifespan,
        )

    # --- plumbing ---------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        await self.backend.startup()
        try:
            yield
        finally:
            await self.backend.shutdown()

    def _endpoint(
        self, route: str, fn: Callable[[Request], Awaitable[Response]], *, auth: bool = False
    ) -> Callable[[Request], Awaitable[Response]]:
        async def handler(request: Request) -> Response:
            request_id = self._request_id(request)
            request.state.request_id = request_id
            start = time.perf_counter()
            try:
                if auth:
                    self._check_key(request)
                response = await fn(request)
            except ApiError as exc:
                response = error_response(exc, request_id)
            except BackendUnavailable as exc:
                response = error_response(
                    ApiError(503, "unavailable", str(exc), headers={"Retry-After": "10"}),
                    request_id,
                )
            except Exception:
                log.exception("unhandled error in %s (request %s)", route, request_id)
                response = error_response(
                    ApiError(500, "internal_error", "unexpected server error; see the logs"),
                    request_id,
                )
            self._record(route, request.method, response.status_code, start)
            return self._with_id(response, request_id)

        handler.__name__ = route
        return handler

    def _record(self, route: str, method: str, status: int, start: float) -> None:
        elapsed_ms = (time.perf_counter() - start) * 1000
        self.requests[(route, status)] += 1
        self.latency.observe(route, elapsed_ms)
        metrics.http_requests().inc(
            1, tags={"route": route, "method": method, "status": str(status)}
        )
        metrics.http_latency().observe(elapsed_ms, tags={"route": route})

    async def _http_exception(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        request_id = self._request_id(request)
        if exc.status_code == 404:
            error = ApiError(404, "not_found", f"no route {request.url.path}")
        elif exc.status_code == 405:
            error = ApiError(
                405,
                "method_not_allowed",
                f"{request.method} is not allowed on {request.url.path}",
                headers=dict(exc.headers or {}),
            )
        else:
            error = ApiError(exc.status_code, "http_error", str(exc.detail))
        self._record("unmatched", request.method, error.status, time.perf_counter())
        return self._with_id(error_response(error, request_id), request_id)

    def _request_id(self, request: Request) -> str:
        return _request_id(request, trust_header=self.config.behind_serve_proxy)

    def _with_id(self, response: Response, request_id: str) -> Response:
        if not self.config.behind_serve_proxy:
            response.headers["X-Request-ID"] = request_id
        return response

    def _check_key(self, request: Request) -> None:
        if not self.config.api_key:
            return
        given = request.headers.get("x-api-key")
        if given is None:
            auth = request.headers.get("authorization", "")
            if auth.lower().startswith("bearer "):
                given = auth[7:].strip()
        if not given or not secrets.compare_digest(given.encode(), self.config.api_key.encode()):
            raise ApiError(
                401,
                "unauthorized",
                "this route needs the API key in the X-API-Key header",
                headers={"WWW-Authenticate": "ApiKey"},
            )

    async def _json_body(self, request: Request) -> Any:
        limit = self.config.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                raise ApiError(400, "bad_request", "Content-Length is not a number")
            if int(declared) > limit:
                raise ApiError(
                    413, "body_too_large", f"body of {declared} bytes is over the {limit} limit"
                )
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ApiError(413, "body_too_large", f"body is over the {limit} byte limit")
            chunks.append(chunk)
        body = b"".join(chunks)
        if not body.strip():
            raise ApiError(400, "malformed_json", "the request body is empty; send a JSON object")
        try:
            return json.loads(body.decode("utf-8"))  # RFC 8259: JSON on the wire is UTF-8
        except UnicodeDecodeError:
            raise ApiError(400, "malformed_json", "the body is not UTF-8 text") from None
        except json.JSONDecodeError as exc:
            raise ApiError(400, "malformed_json", f"the body is not valid JSON: {exc}") from None

    async def _outcome(self, article: Article) -> tuple[Outcome, str]:
        """The backend's outcome; an unreachable or slow Summarizer becomes an ArticleError."""
        try:
            return await asyncio.wait_for(
                self.backend.summarize(article), self.config.summarizer_timeout_s
            )
        except SummarizerUnavailable as exc:
            return _unavailable(article, f"summarizer unavailable: {exc}"), "unavailable"
        except TimeoutError:
            message = f"no summary within {self.config.summarizer_timeout_s:g} s"
            return _unavailable(article, message), "timeout"

    def _articles(self, data: Any) -> list[Article]:
        if isinstance(data, dict) and isinstance(data.get("articles"), list):
            count = len(data["articles"])
            if count > self.config.max_batch_articles:
                raise ApiError(
                    422,
                    "too_many_articles",
                    f"{count} articles in one request; the limit is "
                    f"{self.config.max_batch_articles}",
                )
        return _validate(BatchRequest, data).articles

    # --- routes -----------------------------------------------------------------------------

    async def summarize(self, request: Request) -> Response:
        article = _validate(Article, await self._json_body(request))
        outcome, source = await self._outcome(article)
        if isinstance(outcome, Result):
            return Response(
                outcome.model_dump_json(),
                media_type="application/json",
                headers={"X-Cache": source},
            )
        if source in ("unavailable", "timeout"):
            status = 503 if source == "unavailable" else 504
            raise ApiError(status, source, outcome.message, headers={"Retry-After": "5"})
        status = 422 if outcome.code in CLIENT_ERROR_CODES else 500
        raise ApiError(status, outcome.code, outcome.message, details=[outcome.model_dump()])

    async def summarize_batch(self, request: Request) -> Response:
        articles = self._articles(await self._json_body(request))
        outcomes = await asyncio.gather(*(self._outcome(a) for a in articles))
        body = BatchResponse(results=[o for o, _ in outcomes])
        return Response(body.model_dump_json(), media_type="application/json")

    async def summarize_stream(self, request: Request) -> Response:
        articles = self._articles(await self._json_body(request))

        async def indexed(i: int, article: Article) -> tuple[int, Outcome]:
            return i, (await self._outcome(article))[0]

        async def lines() -> AsyncIterator[str]:
            tasks = [asyncio.ensure_future(indexed(i, a)) for i, a in enumerate(articles)]
            try:
                for next_done in asyncio.as_completed(tasks):
                    i, outcome = await next_done
                    yield StreamLine(index=i, outcome=outcome).model_dump_json() + "\n"
            finally:
                # the client went away: stop waiting for the rest
                for task in tasks:
                    task.cancel()

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    def _list_query(self, request: Request, model: type[_ListQueryT]) -> _ListQueryT:
        """The query string of a list route, validated, with ``limit`` capped by the config."""
        params = dict(request.query_params)
        if "since" in params:
            # an unencoded "+00:00" arrives as " 00:00": unambiguous, so accept it
            params["since"] = params["since"].replace(" ", "+")
        try:
            query = model.model_validate(params)
        except ValidationError as exc:
            raise _validation_error(exc, ("query",)) from None
        if query.limit > self.config.max_list_limit:
            raise ApiError(
                422,
                "validation_error",
                f"query.limit: at most {self.config.max_list_limit}",
                details=[
                    {"loc": ["query", "limit"], "msg": "too large", "type": "less_than_equal"}
                ],
            )
        return query

    async def list_articles(self, request: Request) -> Response:
        query = self._list_query(request, ArticleListQuery)
        since = query.since or datetime.now(UTC) - DEFAULT_LIST_WINDOW
        if since.tzinfo is None:
            since = since.replace(tzinfo=UTC)
        stored = await self.backend.list_articles(
            since=since,
            min_importance=query.min_importance,
            topic=query.topic,
            limit=query.limit,
            half_life_h=self.config.rank_half_life_h,
        )
        items = [_item(s) for s in stored]
        body = ArticleList(since=since, count=len(items), articles=items)
        return Response(body.model_dump_json(), media_type="application/json")

    async def list_stories(self, request: Request) -> Response:
        query = self._list_query(request, StoryQuery)
        body = await self.backend.list_stories(query)
        return Response(body.model_dump_json(), media_type="application/json")

    async def get_article(self, request: Request) -> Response:
        raw = request.path_params["article_id"]
        if not raw.isdigit() or not 1 <= int(raw) <= MAX_ARTICLE_ID:
            raise ApiError(
                422, "validation_error", f"article id must be a positive integer, not {raw!r}"
            )
        stored = await self.backend.get_article(int(raw))
        if stored is None:
            raise ApiError(404, "not_found", f"no article with id {raw}")
        error = None
        if stored.status == "failed":
            error = FailureInfo(
                code=stored.error_code, message=stored.error_message, attempts=stored.attempts
            )
        body = ArticleDetail(
            article=stored.article,
            status=stored.status,  # type: ignore[arg-type]
            result=stored.result,
            error=error,
            summarized_at=stored.summarized_at,
        )
        return Response(body.model_dump_json(), media_type="application/json")

    async def healthz(self, request: Request) -> Response:
        return Response(Health().model_dump_json(), media_type="application/json")

    async def readyz(self, request: Request) -> Response:
        checks, info = await self.backend.readiness()
        ready = all(c.ok for c in checks.values())
        body = Readiness(ready=ready, checks=checks)
        payload = {**body.model_dump(), "info": info}
        return JSONResponse(payload, status_code=200 if ready else 503)

    async def stats(self, request: Request) -> Response:
        by_route: dict[str, dict[str, int]] = {}
        for (route, status), count in sorted(self.requests.items()):
            by_route.setdefault(route, {})[str(status)] = count
        payload = {
            "api": {
                "uptime_s": round(time.time() - self.started_at, 1),
                "requests": by_route,
                "latency": self.latency.summary(),
            },
            **(await self.backend.stats()),
        }
        return JSONResponse(json.loads(json.dumps(payload, default=str)))

    async def openapi_json(self, request: Request) -> Response:
        return JSONResponse(self.openapi)


def _unavailable(article: Article, message: str) -> ArticleError:
    return ArticleError(
        article_id=article.id,
        content_hash=article.content_hash,
        code="internal_error",
        message=message,
    )


def _item(stored: StoredArticle) -> ArticleItem:
    a, r = stored.article, stored.result
    assert a.id is not None and r is not None
    return ArticleItem(
        id=a.id,
        feed_id=a.feed_id,
        title=a.title,
        url=a.url,
        source=a.source,
        author=a.author,
        published=a.published,
        language=a.language,
        summary=r.summary,
        method=r.method,
        importance=r.importance,
        topics=r.topics,
        rank=stored.rank or 0.0,
        summarized_at=stored.summarized_at,
        result=r,
    )


_ERRORS: dict[int, tuple[type[BaseModel] | None, str]] = {
    400: (ErrorResponse, "Malformed JSON or an empty body."),
    401: (ErrorResponse, "Missing or wrong API key (X-API-Key), when one is configured."),
    413: (ErrorResponse, "Body over the size limit."),
    422: (ErrorResponse, "Missing or wrong fields; too many articles; unsummarizable input."),
}


def _route_docs(config: ApiConfig) -> list[RouteDoc]:
    write = {k: _ERRORS[k] for k in (400, 401, 413, 422)}
    return [
        RouteDoc(
            "POST",
            "/v1/summarize",
            "Summarize one article (cached by content and model/adapter/prompt version).",
            request=Article,
            responses={
                200: (Result, "The Result; header X-Cache says local, redis, db or model."),
                **write,
                503: (ErrorResponse, "The Summarizer is unavailable; retry later."),
                504: (ErrorResponse, "No summary within the time limit."),
            },
            auth=True,
            tags=("summarize",),
        ),
        RouteDoc(
            "POST",
            "/v1/summarize/batch",
            f"Summarize up to {config.max_batch_articles} articles; outcomes in request order, "
            "per-article errors in place.",
            request=BatchRequest,
            responses={200: (BatchResponse, "One outcome per article."), **write},
            auth=True,
            tags=("summarize",),
        ),
        RouteDoc(
            "POST",
            "/v1/summarize/stream",
            "Like batch, answered as NDJSON: one StreamLine per article as soon as it is ready.",
            request=BatchRequest,
            responses={200: (StreamLine, "NDJSON, one StreamLine per line."), **write},
            auth=True,
            media_type="application/x-ndjson",
            tags=("summarize",),
        ),
        RouteDoc(
            "GET",
            "/v1/articles",
            "Stored articles with summaries, ranked by importance and recency.",
            query=ArticleListQuery,
            responses={200: (ArticleList, "Ranked articles."), 422: _ERRORS[422]},
            tags=("articles",),
        ),
        RouteDoc(
            "GET",
            "/v1/articles/{article_id}",
            "One stored article with its summary (or why it has none yet).",
            path_params={"article_id": "The article's id."},
            responses={
                200: (ArticleDetail, "The article."),
                404: (ErrorResponse, "No such article."),
                422: (ErrorResponse, "Not a valid id."),
            },
            tags=("articles",),
        ),
        RouteDoc(
            "GET",
            "/v1/stories",
            "Stories of the last 24 h (same-story articles of several sources grouped), ranked "
            "by importance, sources and recency, each with why it ranks there.",
            query=StoryQuery,
            responses={200: (StoryList, "Ranked stories."), 422: _ERRORS[422]},
            tags=("articles",),
        ),
        RouteDoc(
            "GET",
            "/v1/stats",
            "Cache hit rate, batch sizes, latency percentiles, queue depth, articles/day.",
            responses={200: (None, "Statistics (JSON object)."), 401: _ERRORS[401]},
            auth=True,
            tags=("admin",),
        ),
        RouteDoc("GET", "/healthz", "Alive.", responses={200: (Health, "Alive.")}, tags=("admin",)),
        RouteDoc(
            "GET",
            "/readyz",
            "Ready: the model is loaded and the database reachable.",
            responses={200: (Readiness, "Ready."), 503: (Readiness, "Not ready (see checks).")},
            tags=("admin",),
        ),
    ]


def build_api(backend: ApiBackend, config: ApiConfig) -> Starlette:
    """The Starlette app of the API over ``backend``."""
    return Api(backend, config).app
