"""PostgreSQL side of serving: Results with their versions, and stored articles with summaries.

Table ``results`` (migration 003): one row per stored article and model/adapter/prompt
version, holding either the Result (``status='ok'``) or the last per-article error with the
number of attempts. A Result for posted text that matches no stored article (same id *and*
same content hash) is kept under its content hash, ``article_id`` NULL. A stored Result is
never overwritten by an error, and the first Result under a set of versions stays (greedy
decoding makes a second one identical). A stored article's Result is committed together with
the webhook events it fires (:mod:`serving.webhooks.matcher`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from core import db
from core.article import Article
from core.article_rows import ARTICLE_COLUMNS, article_from_row
from serving.model.result import ArticleError, Result
from serving.model.versions import Versions
from serving.settings import ServingSettings
from serving.webhooks.matcher import enqueue_for_article

log = logging.getLogger(__name__)

# Errors the same input will always produce: the loop does not try these articles again.
PERMANENT_ERRORS = ("empty_input", "invalid_input")

_SAVE_OK_ARTICLE = """
INSERT INTO results (article_id, content_hash, model_id, adapter_id, prompt_version, status,
                     summary, importance, topics, result)
VALUES ($1, $2, $3, $4, $5, 'ok', $6, $7, $8, $9::jsonb)
ON CONFLICT (article_id, model_id, adapter_id, prompt_version) WHERE article_id IS NOT NULL
DO UPDATE SET status = 'ok', content_hash = EXCLUDED.content_hash, summary = EXCLUDED.summary,
              importance = EXCLUDED.importance, topics = EXCLUDED.topics,
              result = EXCLUDED.result, error_code = NULL, error_message = NULL,
              updated_at = now()
WHERE results.status <> 'ok'
"""

_SAVE_OK_CONTENT = """
INSERT INTO results (article_id, content_hash, model_id, adapter_id, prompt_version, status,
                     summary, importance, topics, result)
VALUES (NULL, $1, $2, $3, $4, 'ok', $5, $6, $7, $8::jsonb)
ON CONFLICT (content_hash, model_id, adapter_id, prompt_version) WHERE article_id IS NULL
DO NOTHING
"""

_SAVE_ERROR_ARTICLE = """
INSERT INTO results (article_id, content_hash, model_id, adapter_id, prompt_version, status,
                     error_code, error_message)
VALUES ($1, $2, $3, $4, $5, 'error', $6, $7)
ON CONFLICT (article_id, model_id, adapter_id, prompt_version) WHERE article_id IS NOT NULL
DO UPDATE SET attempts = results.attempts + 1, error_code = EXCLUDED.error_code,
              error_message = EXCLUDED.error_message, updated_at = now()
WHERE results.status = 'error'
"""


@dataclass(frozen=True, slots=True)
class ArticleQuery:
    """What ``GET /v1/articles`` asks for, resolved (``since`` given, ranking from the
    settings): one object from the route to the SQL, like :class:`serving.stories.StoryQuery`."""

    since: datetime
    min_importance: float | None = None
    topic: str | None = None
    limit: int = 50
    half_life_h: float = 24.0


@dataclass(slots=True)
class StoredArticle:
    """A stored article with its latest Result (None while pending or failed)."""

    article: Article
    result: Result | None
    rank: float | None = None
    summarized_at: datetime | None = None
    status: str = "pending"  # summarized | pending | failed
    error_code: str | None = None
    error_message: str | None = None
    attempts: int = 0


class ResultStore:
    """Results and article queries on an asyncpg pool (see the module docstring)."""

    def __init__(self, pool: asyncpg.Pool, *, owns_pool: bool = False) -> None:
        self.pool = pool
        self._owns_pool = owns_pool

    @classmethod
    async def open(cls, settings: ServingSettings) -> ResultStore:
        """A store on its own pool of a migrated database."""
        pool = await db.create_pool(settings)
        return cls(pool, owns_pool=True)

    async def close(self) -> None:
        if self._owns_pool:
            await self.pool.close()

    async def ping(self) -> bool:
        try:
            async with self.pool.acquire(timeout=2) as conn:
                await conn.fetchval("SELECT 1", timeout=2)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
            return False
        return True

    # --- writing ----------------------------------------------------------------------------

    async def save(
        self,
        article: Article,
        outcome: Result | ArticleError,
        default_versions: Versions | None = None,
    ) -> str:
        """Store one outcome; returns where it went: article, content, skipped, kept.

        Errors are stored only for stored articles (their attempts steer the loop); a posted
        text's error is the caller's to see, not history.
        """
        versions = Versions.of(outcome) or default_versions
        if versions is None:
            return "skipped"
        async with self.pool.acquire() as conn:
            matches = article.id is not None and await conn.fetchval(
                "SELECT EXISTS (SELECT 1 FROM articles WHERE id = $1 AND content_hash = $2)",
                article.id,
                article.content_hash,
            )
            key = (versions.model_id, versions.adapter_key, versions.prompt_version)
            if isinstance(outcome, Result):
                values = (
                    outcome.summary,
                    outcome.importance,
                    outcome.topics,
                    outcome.model_dump_json(),
                )
                if matches:
                    async with conn.transaction():
                        status = await conn.execute(
                            _SAVE_OK_ARTICLE, article.id, article.content_hash, *key, *values
                        )
                        if not status.endswith(" 1"):
                            return "kept"
                        # webhook events of its story, committed with the Result
                        await enqueue_for_article(conn, article.id)
                    return "article"
                await conn.execute(_SAVE_OK_CONTENT, article.content_hash, *key, *values)
                return "content"
            if not matches:
                return "skipped"
            status = await conn.execute(
                _SAVE_ERROR_ARTICLE,
                article.id,
                article.content_hash,
                *key,
                outcome.code,
                outcome.message[:2_000],
            )
            return "article" if status.endswith(" 1") else "kept"

    # --- reading ----------------------------------------------------------------------------

    async def find_result(self, content_hash: str, versions: Versions) -> Result | None:
        """A stored Result for this content under these versions, from any article."""
        raw = await self.pool.fetchval(
            """
            SELECT result FROM results
            WHERE content_hash = $1 AND model_id = $2 AND adapter_id = $3
              AND prompt_version = $4 AND status = 'ok'
            LIMIT 1
            """,
            content_hash,
            versions.model_id,
            versions.adapter_key,
            versions.prompt_version,
        )
        return Result.model_validate_json(raw) if raw is not None else None

    async def pending_articles(
        self,
        versions: Versions,
        *,
        limit: int,
        max_age_h: float,
        max_attempts: int,
        retry_after_s: float,
    ) -> list[Article]:
        """Stored articles with no Result under ``versions``, newest first.

        Left out: articles published more than ``max_age_h`` ago, articles whose error is
        permanent or has had ``max_attempts``, and those that failed less than
        ``retry_after_s`` ago.
        """
        rows = await self.pool.fetch(
            f"""
            SELECT {ARTICLE_COLUMNS} FROM articles a
            WHERE a.published_at >= now() - make_interval(secs => $5)
              AND NOT EXISTS (
                SELECT 1 FROM results r
                WHERE r.article_id = a.id AND r.model_id = $1 AND r.adapter_id = $2
                  AND r.prompt_version = $3
                  AND (r.status = 'ok' OR r.attempts >= $6
                       OR r.error_code = ANY($8::text[])
                       OR r.updated_at > now() - make_interval(secs => $7)))
            ORDER BY a.published_at DESC, a.id DESC
            LIMIT $4
            """,
            versions.model_id,
            versions.adapter_key,
            versions.prompt_version,
            limit,
            max_age_h * 3600.0,
            max_attempts,
            retry_after_s,
            list(PERMANENT_ERRORS),
        )
        return [article_from_row(r) for r in rows]

    async def list_articles(self, query: ArticleQuery) -> list[StoredArticle]:
        """Summarized articles published since ``query.since``, ranked by importance and recency.

        rank = importance x 0.5 ** (age in hours / half_life_h): a story loses half its weight
        per half-life, so a 90 from two days ago ranks below a 50 from this morning. Copies of
        an already listed story (``duplicate_of``) are left out.
        """
        rows = await self.pool.fetch(
            f"""
            SELECT {ARTICLE_COLUMNS}, r.result, r.updated_at AS summarized_at,
                   r.importance * power(0.5, GREATEST(0.0,
                       EXTRACT(EPOCH FROM (now() - a.published_at)) / 3600.0) / $5) AS rank
            FROM articles a
            JOIN LATERAL (
                SELECT result, importance, topics, updated_at FROM results r
                WHERE r.article_id = a.id AND r.status = 'ok'
                ORDER BY r.updated_at DESC LIMIT 1
            ) r ON true
            WHERE a.published_at >= $1 AND a.duplicate_of IS NULL
              AND ($2::real IS NULL OR r.importance >= $2)
              AND ($3::text IS NULL
                   OR EXISTS (SELECT 1 FROM unnest(r.topics) t WHERE lower(t) = lower($3)))
            ORDER BY rank DESC, a.published_at DESC, a.id DESC
            LIMIT $4
            """,
            query.since,
            query.min_importance,
            query.topic,
            query.limit,
            query.half_life_h,
        )
        return [
            StoredArticle(
                article=article_from_row(r),
                result=Result.model_validate_json(r["result"]),
                rank=float(r["rank"]),
                summarized_at=r["summarized_at"],
                status="summarized",
            )
            for r in rows
        ]

    async def get_article(self, article_id: int) -> StoredArticle | None:
        """One stored article with its latest Result, or its latest error."""
        row = await self.pool.fetchrow(
            f"SELECT {ARTICLE_COLUMNS} FROM articles a WHERE a.id = $1", article_id
        )
        if row is None:
            return None
        stored = StoredArticle(article=article_from_row(row), result=None)
        latest = await self.pool.fetchrow(
            """
            SELECT status, result, error_code, error_message, attempts, updated_at
            FROM results WHERE article_id = $1
            ORDER BY (status = 'ok') DESC, updated_at DESC LIMIT 1
            """,
            article_id,
        )
        if latest is not None:
            stored.attempts = latest["attempts"]
            stored.summarized_at = latest["updated_at"]
            if latest["status"] == "ok":
                stored.result = Result.model_validate_json(latest["result"])
                stored.status = "summarized"
            else:
                stored.status = "failed"
                stored.error_code = latest["error_code"]
                stored.error_message = latest["error_message"]
        return stored

    async def rates(self) -> dict[str, Any]:
        """Throughput from the table itself: the same for every replica that asks.

        The last day's Results also by ``method`` (abstractive: the model's summary;
        extractive: the article's sentences, the model's failed the verifier) and by the
        verifier's ``verdict``; Results stored before the verifier have neither a method (they
        are the model's) nor a report (``unverified``).
        """
        row = await self.pool.fetchrow(
            """
            WITH ok AS (
              SELECT COALESCE(result->>'method', 'abstractive') AS method,
                     COALESCE(result->'verification'->>'verdict', 'unverified') AS verdict
              FROM results WHERE status = 'ok' AND created_at > now() - interval '1 day'
            )
            SELECT q.*,
              (SELECT count(*) FROM results WHERE status = 'ok'
                 AND created_at > now() - interval '1 hour') AS summarized_1h,
              (SELECT count(*) FROM results WHERE status = 'error'
                 AND updated_at > now() - interval '1 day') AS failed_24h,
              (SELECT count(*) FROM articles
                 WHERE fetched_at > now() - interval '1 day') AS ingested_24h
            FROM (
              SELECT count(*) AS summarized_24h,
                     count(*) FILTER (WHERE method = 'abstractive') AS abstractive,
                     count(*) FILTER (WHERE method = 'extractive') AS extractive,
                     count(*) FILTER (WHERE verdict = 'pass') AS pass,
                     count(*) FILTER (WHERE verdict = 'fail') AS fail,
                     count(*) FILTER (WHERE verdict = 'unverified') AS unverified
              FROM ok
            ) q
            """
        )
        assert row is not None
        summarized = row["summarized_24h"]
        return {
            "summarized_24h": summarized,
            "articles_per_day_last_hour": row["summarized_1h"] * 24,
            "failed_24h": row["failed_24h"],
            "ingested_24h": row["ingested_24h"],
            "methods_24h": {"abstractive": row["abstractive"], "extractive": row["extractive"]},
            "verdicts_24h": {
                "pass": row["pass"],
                "fail": row["fail"],
                "unverified": row["unverified"],
            },
            "abstractive_share_24h": (
                round(row["abstractive"] / summarized, 4) if summarized else None
            ),
        }
