"""The API's routes, listed once: :meth:`ApiRoutes.table` gives each route's handler, its
middleware needs (API key, body limit) and its documentation; :func:`serving.api.build_api`
makes the Starlette routes and ``/openapi.json`` from that one list.

Handlers parse and validate, call the :class:`~serving.http.backend.ApiBackend`, and raise
:class:`~serving.http.errors.ApiError` (or let the backend's typed errors through) for the
error handlers to answer. (Over 400 lines: the one route list, with its OpenAPI text, sits
beside the handlers it names, so a route is read and changed in one place.)
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from core.article import Article
from serving.http.backend import ApiBackend
from serving.http.config import ApiConfig
from serving.http.errors import ApiError, validate, validation_error
from serving.http.middleware import RequestStats
from serving.openapi import RouteDoc
from serving.result import Outcome, Result, SummarizerUnavailable
from serving.schemas import (
    ArticleDetail,
    ArticleItem,
    ArticleList,
    ArticleListQuery,
    BatchRequest,
    BatchResponse,
    ErrorResponse,
    FailureInfo,
    Health,
    Readiness,
    StreamLine,
)
from serving.store import ArticleQuery, StoredArticle
from serving.stories.schemas import StoryList, StoryQuery

_ListQueryT = TypeVar("_ListQueryT", ArticleListQuery, StoryQuery)
Handler = Callable[[Request], Awaitable[Response]]

MAX_ARTICLE_ID = 2**63 - 1
DEFAULT_LIST_WINDOW = timedelta(days=7)
# Engine codes that mean "this input cannot be summarized": a client error, not a server one.
CLIENT_ERROR_CODES = {"empty_input", "invalid_input", "generation_failed"}


@dataclass(frozen=True)
class ApiRoute:
    """One route: ``name`` labels its metrics, ``doc`` gives its method, path and OpenAPI
    entry (``documented`` False: left out, for the document itself), ``doc.auth`` puts the
    API key in front of it and ``reads_body`` the body-size limit."""

    name: str
    handler: Handler
    doc: RouteDoc
    reads_body: bool = False
    documented: bool = True

    @property
    def method(self) -> str:
        return self.doc.method

    @property
    def path(self) -> str:
        return self.doc.path


_ERRORS: dict[int, tuple[type[BaseModel] | None, str]] = {
    400: (ErrorResponse, "Malformed JSON or an empty body."),
    401: (ErrorResponse, "Missing or wrong API key (X-API-Key), when one is configured."),
    413: (ErrorResponse, "Body over the size limit."),
    422: (ErrorResponse, "Missing or wrong fields; too many articles; unsummarizable input."),
}
_WRITE_ERRORS = {k: _ERRORS[k] for k in (400, 401, 413, 422)}


class ApiRoutes:
    """The handlers over one backend and config."""

    def __init__(self, backend: ApiBackend, config: ApiConfig, stats: RequestStats) -> None:
        self.backend = backend
        self.config = config
        self.request_stats = stats
        self.openapi: dict[str, Any] = {}  # filled by build_api from table()

    def table(self) -> list[ApiRoute]:
        max_batch = self.config.max_batch_articles
        return [
            ApiRoute(
                "summarize",
                self.summarize,
                RouteDoc(
                    "POST",
                    "/v1/summarize",
                    "Summarize one article (cached by content and model/adapter/prompt version).",
                    request=Article,
                    responses={
                        200: (Result, "The Result; header X-Cache says local, redis, db or model."),
                        **_WRITE_ERRORS,
                        503: (ErrorResponse, "The Summarizer is unavailable; retry later."),
                        504: (ErrorResponse, "No summary within the time limit."),
                    },
                    auth=True,
                    tags=("summarize",),
                ),
                reads_body=True,
            ),
            ApiRoute(
                "summarize_batch",
                self.summarize_batch,
                RouteDoc(
                    "POST",
                    "/v1/summarize/batch",
                    f"Summarize up to {max_batch} articles; outcomes in request order, "
                    "per-article errors in place.",
                    request=BatchRequest,
                    responses={200: (BatchResponse, "One outcome per article."), **_WRITE_ERRORS},
                    auth=True,
                    tags=("summarize",),
                ),
                reads_body=True,
            ),
            ApiRoute(
                "summarize_stream",
                self.summarize_stream,
                RouteDoc(
                    "POST",
                    "/v1/summarize/stream",
                    "Like batch, answered as NDJSON: one StreamLine per article as soon as it "
                    "is ready.",
                    request=BatchRequest,
                    responses={
                        200: (StreamLine, "NDJSON, one StreamLine per line."),
                        **_WRITE_ERRORS,
                    },
                    auth=True,
                    media_type="application/x-ndjson",
                    tags=("summarize",),
                ),
                reads_body=True,
            ),
            ApiRoute(
                "articles",
                self.list_articles,
                RouteDoc(
                    "GET",
                    "/v1/articles",
                    "Stored articles with summaries, ranked by importance and recency.",
                    query=ArticleListQuery,
                    responses={200: (ArticleList, "Ranked articles."), 422: _ERRORS[422]},
                    tags=("articles",),
                ),
            ),
            ApiRoute(
                "article",
                self.get_article,
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
            ),
            ApiRoute(
                "stories",
                self.list_stories,
                RouteDoc(
                    "GET",
                    "/v1/stories",
                    "Stories of the last 24 h (same-story articles of several sources "
                    "grouped), ranked by importance, sources and recency, each with why it "
                    "ranks there.",
                    query=StoryQuery,
                    responses={200: (StoryList, "Ranked stories."), 422: _ERRORS[422]},
                    tags=("articles",),
                ),
            ),
            ApiRoute(
                "stats",
                self.stats,
                RouteDoc(
                    "GET",
                    "/v1/stats",
                    "Cache hit rate, batch sizes, latency percentiles, queue depth, articles/day.",
                    responses={200: (None, "Statistics (JSON object)."), 401: _ERRORS[401]},
                    auth=True,
                    tags=("admin",),
                ),
            ),
            ApiRoute(
                "healthz",
                self.healthz,
                RouteDoc(
                    "GET",
                    "/healthz",
                    "Alive.",
                    responses={200: (Health, "Alive.")},
                    tags=("admin",),
                ),
            ),
            ApiRoute(
                "readyz",
                self.readyz,
                RouteDoc(
                    "GET",
                    "/readyz",
                    "Ready: the model is loaded and the database reachable.",
                    responses={
                        200: (Readiness, "Ready."),
                        503: (Readiness, "Not ready (see checks)."),
                    },
                    tags=("admin",),
                ),
            ),
            ApiRoute(
                "openapi",
                self.openapi_json,
                RouteDoc("GET", "/openapi.json", "This document.", responses={}),
                documented=False,
            ),
        ]

    # --- request parsing --------------------------------------------------------------------

    async def _json_body(self, request: Request) -> Any:
        """The body as JSON (its size is already limited by BodyLimitMiddleware)."""
        body = await request.body()
        if not body.strip():
            raise ApiError(400, "malformed_json", "the request body is empty; send a JSON object")
        try:
            return json.loads(body.decode("utf-8"))  # RFC 8259: JSON on the wire is UTF-8
        except UnicodeDecodeError:
            raise ApiError(400, "malformed_json", "the body is not UTF-8 text") from None
        except json.JSONDecodeError as exc:
            raise ApiError(400, "malformed_json", f"the body is not valid JSON: {exc}") from None

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
        return validate(BatchRequest, data).articles

    def _list_query(self, request: Request, model: type[_ListQueryT]) -> _ListQueryT:
        """The query string of a list route, validated, with ``limit`` capped by the config."""
        params = dict(request.query_params)
        if "since" in params:
            # an unencoded "+00:00" arrives as " 00:00": unambiguous, so accept it
            params["since"] = params["since"].replace(" ", "+")
        try:
            query = model.model_validate(params)
        except ValidationError as exc:
            raise validation_error(exc, ("query",)) from None
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

    async def _outcome(self, article: Article) -> tuple[Outcome, str]:
        """The backend's outcome within the time limit; raises SummarizerUnavailable."""
        timeout_s = self.config.summarizer_timeout_s
        try:
            return await asyncio.wait_for(self.backend.summarize(article), timeout_s)
        except TimeoutError:
            raise SummarizerUnavailable(
                f"no summary within {timeout_s:g} s", timed_out=True
            ) from None

    async def _outcome_in_place(self, article: Article) -> Outcome:
        """For replies answering each article in place: unavailable becomes its error."""
        try:
            return (await self._outcome(article))[0]
        except SummarizerUnavailable as exc:
            return exc.as_error(article.id, article.content_hash)

    # --- handlers ---------------------------------------------------------------------------

    async def summarize(self, request: Request) -> Response:
        article = validate(Article, await self._json_body(request))
        outcome, source = await self._outcome(article)
        if isinstance(outcome, Result):
            return Response(
                outcome.model_dump_json(),
                media_type="application/json",
                headers={"X-Cache": source},
            )
        status = 422 if outcome.code in CLIENT_ERROR_CODES else 500
        raise ApiError(status, outcome.code, outcome.message, details=[outcome.model_dump()])

    async def summarize_batch(self, request: Request) -> Response:
        articles = self._articles(await self._json_body(request))
        outcomes = await asyncio.gather(*(self._outcome_in_place(a) for a in articles))
        body = BatchResponse(results=list(outcomes))
        return Response(body.model_dump_json(), media_type="application/json")

    async def summarize_stream(self, request: Request) -> Response:
        articles = self._articles(await self._json_body(request))

        async def indexed(i: int, article: Article) -> tuple[int, Outcome]:
            return i, await self._outcome_in_place(article)

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

    async def list_articles(self, request: Request) -> Response:
        query = self._list_query(request, ArticleListQuery)
        since = query.since or datetime.now(UTC) - DEFAULT_LIST_WINDOW
        if since.tzinfo is None:
            since = since.replace(tzinfo=UTC)
        stored = await self.backend.list_articles(
            ArticleQuery(
                since=since,
                min_importance=query.min_importance,
                topic=query.topic,
                limit=query.limit,
                half_life_h=self.config.rank_half_life_h,
            )
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
        payload = {"api": self.request_stats.summary(), **(await self.backend.stats())}
        return JSONResponse(json.loads(json.dumps(payload, default=str)))

    async def openapi_json(self, request: Request) -> Response:
        return JSONResponse(self.openapi)


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
