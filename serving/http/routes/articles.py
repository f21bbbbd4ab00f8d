"""The reading routes: ``GET /v1/articles`` (ranked summarized articles), ``/v1/articles/{id}``
and ``/v1/stories`` (same-story articles grouped and ranked)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from starlette.requests import Request
from starlette.responses import Response

from serving.http.errors import ApiError
from serving.http.openapi import RouteDoc
from serving.http.routes.route import (
    ERRORS,
    ApiRoute,
    RouteContext,
    json_response,
    positive_id,
    query_of,
)
from serving.http.schemas import (
    ArticleDetail,
    ArticleItem,
    ArticleList,
    ArticleListQuery,
    ErrorResponse,
    FailureInfo,
)
from serving.stories.schemas import StoryList, StoryQuery
from serving.summaries.result_store import ArticleQuery, StoredArticle

DEFAULT_LIST_WINDOW = timedelta(days=7)


class ArticleRoutes:
    def __init__(self, ctx: RouteContext) -> None:
        self.ctx = ctx

    def table(self) -> list[ApiRoute]:
        return [
            ApiRoute(
                "articles",
                self.list_articles,
                RouteDoc(
                    "GET",
                    "/v1/articles",
                    "Stored articles with summaries, ranked by importance and recency.",
                    query=ArticleListQuery,
                    responses={200: (ArticleList, "Ranked articles."), 422: ERRORS[422]},
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
                    responses={200: (StoryList, "Ranked stories."), 422: ERRORS[422]},
                    tags=("articles",),
                ),
            ),
        ]

    async def list_articles(self, request: Request) -> Response:
        query = query_of(request, ArticleListQuery, max_limit=self.ctx.config.max_list_limit)
        since = query.since or datetime.now(UTC) - DEFAULT_LIST_WINDOW
        if since.tzinfo is None:
            since = since.replace(tzinfo=UTC)
        stored = await self.ctx.backend.list_articles(
            ArticleQuery(
                since=since,
                min_importance=query.min_importance,
                topic=query.topic,
                limit=query.limit,
                half_life_h=self.ctx.config.rank_half_life_h,
            )
        )
        items = [_item(s) for s in stored]
        return json_response(ArticleList(since=since, count=len(items), articles=items))

    async def list_stories(self, request: Request) -> Response:
        query = query_of(request, StoryQuery, max_limit=self.ctx.config.max_list_limit)
        return json_response(await self.ctx.backend.list_stories(query))

    async def get_article(self, request: Request) -> Response:
        article_id = positive_id(request, "article_id", "article")
        stored = await self.ctx.backend.get_article(article_id)
        if stored is None:
            raise ApiError(404, "not_found", f"no article with id {article_id}")
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
        return json_response(body)


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
