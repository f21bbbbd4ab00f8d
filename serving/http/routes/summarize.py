"""``POST /v1/summarize``, ``/v1/summarize/batch`` and ``/v1/summarize/stream``: articles in,
Results out, through the backend (cache, then the Summarizer) within the time limit."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from core.article import Article
from serving.http.errors import ApiError, validate
from serving.http.openapi import RouteDoc
from serving.http.routes.route import WRITE_ERRORS, ApiRoute, RouteContext, json_body, json_response
from serving.http.schemas import BatchRequest, BatchResponse, ErrorResponse, StreamLine
from serving.model.result import Outcome, Result, SummarizerUnavailable

# Engine codes that mean "this input cannot be summarized": a client error, not a server one.
CLIENT_ERROR_CODES = {"empty_input", "invalid_input", "generation_failed"}


class SummarizeRoutes:
    def __init__(self, ctx: RouteContext) -> None:
        self.ctx = ctx

    def table(self) -> list[ApiRoute]:
        max_batch = self.ctx.config.max_batch_articles
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
                        **WRITE_ERRORS,
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
                    responses={200: (BatchResponse, "One outcome per article."), **WRITE_ERRORS},
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
                        **WRITE_ERRORS,
                    },
                    auth=True,
                    media_type="application/x-ndjson",
                    tags=("summarize",),
                ),
                reads_body=True,
            ),
        ]

    def _articles(self, data: Any) -> list[Article]:
        limit = self.ctx.config.max_batch_articles
        if isinstance(data, dict) and isinstance(data.get("articles"), list):
            count = len(data["articles"])
            if count > limit:
                raise ApiError(
                    422,
                    "too_many_articles",
                    f"{count} articles in one request; the limit is {limit}",
                )
        return validate(BatchRequest, data).articles

    async def _outcome(self, article: Article) -> tuple[Outcome, str]:
        """The backend's outcome within the time limit; raises SummarizerUnavailable."""
        timeout_s = self.ctx.config.summarizer_timeout_s
        try:
            return await asyncio.wait_for(self.ctx.backend.summarize(article), timeout_s)
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

    async def summarize(self, request: Request) -> Response:
        article = validate(Article, await json_body(request))
        outcome, source = await self._outcome(article)
        if isinstance(outcome, Result):
            return json_response(outcome, headers={"X-Cache": source})
        status = 422 if outcome.code in CLIENT_ERROR_CODES else 500
        raise ApiError(status, outcome.code, outcome.message, details=[outcome.model_dump()])

    async def summarize_batch(self, request: Request) -> Response:
        articles = self._articles(await json_body(request))
        outcomes = await asyncio.gather(*(self._outcome_in_place(a) for a in articles))
        return json_response(BatchResponse(results=list(outcomes)))

    async def summarize_stream(self, request: Request) -> Response:
        articles = self._articles(await json_body(request))

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
