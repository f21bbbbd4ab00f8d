"""What the routes need from the rest of the application: :class:`ApiBackend`.

The Ingress deployment implements it with DeploymentHandles
(:class:`serving.deployments.ingress.ServeBackend`), :class:`serving.deployments.local.LocalBackend`
in one process; the routes see no difference.
"""

from __future__ import annotations

from typing import Any, Protocol

import asyncpg

from core.article import Article
from serving.http.schemas import Check
from serving.model.result import Outcome
from serving.stories.schemas import StoryList, StoryQuery
from serving.summaries.result_store import ArticleQuery, StoredArticle


class ApiBackend(Protocol):
    async def startup(self) -> None: ...

    async def shutdown(self) -> None: ...

    async def summarize(self, article: Article) -> tuple[Outcome, str]:
        """The outcome and its source (local, redis, db, model, coalesced, rejected).

        Raises :class:`serving.model.result.SummarizerUnavailable` when the Summarizer cannot
        answer.
        """
        ...

    async def database(self) -> asyncpg.Pool:
        """The PostgreSQL pool, for route groups that only read and write the database (the
        digest feeds, search, webhooks, feed administration): their SQL lives in their own
        storage modules. Raises :class:`serving.http.errors.BackendUnavailable` without one;
        a connection lost mid-query becomes a 503 in :mod:`serving.http.errors`."""
        ...

    async def list_articles(self, query: ArticleQuery) -> list[StoredArticle]:
        """Ranked summarized articles. Raises BackendUnavailable without a database."""
        ...

    async def get_article(self, article_id: int) -> StoredArticle | None: ...

    async def list_stories(self, query: StoryQuery) -> StoryList:
        """Ranked stories (serving.stories.ranking.list_stories with the settings' ranking)."""
        ...

    async def readiness(self) -> tuple[dict[str, Check], dict[str, str]]:
        """Gating checks (all must pass) and informational states."""
        ...

    async def stats(self) -> dict[str, Any]: ...
