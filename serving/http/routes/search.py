"""``GET /v1/search``: stored articles and their summaries found by words, ranked by
relevance, recency and importance (:mod:`serving.search`). Public, like ``/v1/articles``."""

from __future__ import annotations

from datetime import UTC

from starlette.requests import Request
from starlette.responses import Response

from serving.http.errors import ApiError
from serving.http.openapi import RouteDoc
from serving.http.routes.route import ERRORS, ApiRoute, RouteContext, json_response, query_of
from serving.search.schemas import SearchQuery, SearchResults
from serving.search.store import Search, SearchTooBroad, search


class SearchRoutes:
    def __init__(self, ctx: RouteContext) -> None:
        self.ctx = ctx

    def table(self) -> list[ApiRoute]:
        return [
            ApiRoute(
                "search",
                self.search,
                RouteDoc(
                    "GET",
                    "/v1/search",
                    "Stored articles and summaries matching words (quotes for a phrase, OR, "
                    "-word to exclude), ranked by relevance, recency and importance, each "
                    "with a highlighted snippet and its score parts.",
                    query=SearchQuery,
                    responses={
                        200: (
                            SearchResults,
                            "A page of hits (none, with a note, when the "
                            "query has only stop words).",
                        ),
                        422: (
                            ERRORS[422][0],
                            "A missing, empty or over-long q; bad filters; a query matching "
                            "so much that it ran past the time limit (query_too_broad).",
                        ),
                        503: ERRORS[503],
                    },
                    tags=("articles",),
                ),
            ),
        ]

    async def search(self, request: Request) -> Response:
        query = query_of(request, SearchQuery, max_limit=self.ctx.config.max_list_limit)
        if query.since is not None and query.since.tzinfo is None:
            query = query.model_copy(update={"since": query.since.replace(tzinfo=UTC)})
        pool = await self.ctx.backend.database()
        try:
            results = await search(
                pool, Search(query=query, half_life_h=self.ctx.config.rank_half_life_h)
            )
        except SearchTooBroad as exc:
            raise ApiError(422, "query_too_broad", str(exc)) from None
        return json_response(results)
