"""All SQL of stories (tables ``stories`` and ``story_articles``, migration 005): which
vector type the columns have, the articles still without a story, the assignment transaction
that applies :mod:`serving.stories.clustering`'s rule, and the ranking queries read by
:mod:`serving.stories.ranking`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Literal

import asyncpg
import numpy as np

from core.article import Article
from core.article_rows import ARTICLE_COLUMNS, article_from_row
from serving.stories.clustering import (
    AssignReport,
    Candidates,
    assignment_order,
    joined_centroid,
    similar_or_founder,
    unit,
)
from serving.stories.embedder import EMBEDDING_DIM
from serving.stories.schemas import StoryQuery

STORIES_LOCK_KEY = 7_231_005  # advisory-lock id of story assignment (005: stories)
Backend = Literal["pgvector", "array"]


async def vector_backend(conn: asyncpg.Connection | asyncpg.Pool) -> Backend:
    """``pgvector`` when migration 005 could turn the columns into ``vector``, else ``array``."""
    kind = await conn.fetchval(
        "SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
        "WHERE attrelid = 'stories'::regclass AND attname = 'centroid'"
    )
    return "pgvector" if str(kind).startswith("vector") else "array"


def _cast(backend: Backend) -> str:
    """SQL cast of a real[] parameter into the column type."""
    return "::real[]::vector" if backend == "pgvector" else "::real[]"


# --- assignment -----------------------------------------------------------------------------

_PENDING = f"""
SELECT {ARTICLE_COLUMNS}
FROM articles a
WHERE a.published_at >= $1
  AND NOT EXISTS (SELECT 1 FROM story_articles sa WHERE sa.article_id = a.id)
ORDER BY a.published_at, a.id
LIMIT $2
"""


async def pending_articles(pool: asyncpg.Pool, *, max_age_h: float, limit: int) -> list[Article]:
    """Articles published within ``max_age_h`` that belong to no story yet, oldest first."""
    since = datetime.now(UTC) - timedelta(hours=max_age_h)
    rows = await pool.fetch(_PENDING, since, limit)
    return [article_from_row(r) for r in rows]


async def _window_candidates(
    conn: asyncpg.Connection, times: list[datetime], window_s: float
) -> Candidates:
    """The stories alive within the window of any of ``times``, read once (numpy path)."""
    lo = min(times) - timedelta(seconds=window_s)
    hi = max(times) + timedelta(seconds=window_s)
    rows = await conn.fetch(
        "SELECT id, centroid, first_published_at, last_published_at "
        "FROM stories WHERE last_published_at >= $1 AND first_published_at <= $2",
        lo,
        hi,
    )
    return Candidates(
        ids=[r["id"] for r in rows],
        centroids=np.asarray([r["centroid"] for r in rows], dtype=np.float32).reshape(
            len(rows), EMBEDDING_DIM
        ),
        first=[r["first_published_at"].timestamp() for r in rows],
        last=[r["last_published_at"].timestamp() for r in rows],
    )


async def assign_articles(
    conn: asyncpg.Connection,
    articles: list[Article],
    embeddings: np.ndarray,
    *,
    threshold: float,
    window_h: float,
) -> AssignReport:
    """Give each article a story (see :mod:`serving.stories`). Runs in one transaction under
    the assignment lock; articles assigned meanwhile by another process are skipped."""
    report = AssignReport()
    if not articles:
        return report
    if embeddings.shape != (len(articles), EMBEDDING_DIM):
        raise ValueError(f"expected {len(articles)} x {EMBEDDING_DIM} embeddings")
    backend = await vector_backend(conn)
    cast = _cast(backend)
    window_s = window_h * 3600.0
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", STORIES_LOCK_KEY)
        ids = [a.id for a in articles]
        done = {
            r["article_id"]
            for r in await conn.fetch(
                "SELECT article_id FROM story_articles WHERE article_id = ANY($1::bigint[])", ids
            )
        }
        order = assignment_order(articles)
        times = [(a.published or datetime.now(UTC)) for a in articles]
        candidates: Candidates | None = None
        if backend == "array":
            candidates = await _window_candidates(conn, times, window_s)
        for i in order:
            article = articles[i]
            if article.id is None or article.id in done:
                continue
            vector = embeddings[i].astype(np.float32)
            at = times[i]
            story_id: int | None = None
            similarity = 1.0
            joined_by = "founder"
            if article.duplicate_of is not None:
                story_id = await conn.fetchval(
                    "SELECT story_id FROM story_articles WHERE article_id = $1",
                    article.duplicate_of,
                )
                if story_id is not None:
                    joined_by = "duplicate"
            if story_id is None:
                found: tuple[int, float] | None
                if candidates is not None:
                    found = candidates.nearest(vector, at.timestamp(), window_s)
                else:
                    row = await conn.fetchrow(
                        f"SELECT id, 1 - (centroid <=> $1{cast}) AS similarity FROM stories "
                        "WHERE last_published_at >= $2 AND first_published_at <= $3 "
                        f"ORDER BY centroid <=> $1{cast} LIMIT 1",
                        vector.tolist(),
                        at - timedelta(seconds=window_s),
                        at + timedelta(seconds=window_s),
                    )
                    found = (row["id"], float(row["similarity"])) if row else None
                story_id, similarity, joined_by = similar_or_founder(found, threshold)
            if story_id is None:
                story_id = await conn.fetchval(
                    f"INSERT INTO stories (centroid, n_articles, first_published_at, "
                    f"last_published_at) VALUES ($1{cast}, 1, $2, $2) RETURNING id",
                    vector.tolist(),
                    at,
                )
                if candidates is not None:
                    candidates.add(story_id, vector, at.timestamp())
            else:
                row = await conn.fetchrow(
                    "SELECT centroid::real[] AS centroid, n_articles FROM stories "
                    "WHERE id = $1 FOR UPDATE",
                    story_id,
                )
                old = np.asarray(row["centroid"], dtype=np.float32)
                centroid = joined_centroid(old, int(row["n_articles"]), vector)
                if joined_by == "duplicate":
                    similarity = float(unit(old) @ vector)
                await conn.execute(
                    f"UPDATE stories SET centroid = $2{cast}, n_articles = n_articles + 1, "
                    "first_published_at = LEAST(first_published_at, $3), "
                    "last_published_at = GREATEST(last_published_at, $3), updated_at = now() "
                    "WHERE id = $1",
                    story_id,
                    centroid.tolist(),
                    at,
                )
                if candidates is not None:
                    candidates.update(story_id, centroid, at.timestamp())
            await conn.execute(
                f"INSERT INTO story_articles (article_id, story_id, embedding, joined_by, "
                f"similarity) VALUES ($1, $2, $3{cast}, $4, $5)",
                article.id,
                story_id,
                vector.tolist(),
                joined_by,
                round(similarity, 4),
            )
            done.add(article.id)
            report.assigned += 1
            report.by[joined_by] += 1
            report.stories.add(story_id)
    return report


# --- ranking --------------------------------------------------------------------------------

_LATEST_RESULT = """
LEFT JOIN LATERAL (
    SELECT summary, importance, topics,
           COALESCE(result->>'method', 'abstractive') AS method
    FROM results r
    WHERE r.article_id = a.id AND r.status = 'ok'
    ORDER BY r.updated_at DESC LIMIT 1
) r ON true
"""

_RANKED = f"""
WITH m AS (
    SELECT sa.story_id, a.source, a.feed_id, a.published_at, r.importance, r.topics
    FROM stories s
    JOIN story_articles sa ON sa.story_id = s.id
    JOIN articles a ON a.id = sa.article_id
    {_LATEST_RESULT}
    WHERE s.last_published_at >= $1
),
agg AS (
    SELECT story_id,
           max(importance) AS importance,
           avg(importance) AS mean_importance,
           count(*) AS n_articles,
           count(DISTINCT COALESCE(NULLIF(source, ''), 'feed ' || feed_id)) AS n_sources,
           min(published_at) AS first_published,
           max(published_at) AS last_published,
           bool_or($3::text IS NULL
                   OR EXISTS (SELECT 1 FROM unnest(topics) t WHERE lower(t) = lower($3)))
               AS topic_ok,
           bool_or($4::text IS NULL OR lower(COALESCE(source, '')) = lower($4)) AS source_ok
    FROM m GROUP BY story_id
),
ranked AS (
    SELECT *,
           LEAST(1.0 + $6::float8 * (n_sources - 1), $7::float8) AS source_factor,
           GREATEST(0.0, EXTRACT(EPOCH FROM ($8::timestamptz - last_published)) / 3600.0) AS age_h
    FROM agg
    WHERE importance IS NOT NULL AND last_published >= $1
      AND ($2::real IS NULL OR importance >= $2) AND topic_ok AND source_ok
)
SELECT *, power(0.5, age_h / $5::float8) AS recency_factor,
       importance * source_factor * power(0.5, age_h / $5::float8) AS rank
FROM ranked
ORDER BY rank DESC, last_published DESC, story_id DESC
LIMIT $9
"""

_MEMBERS = f"""
SELECT sa.story_id, sa.joined_by, sa.similarity, a.id, a.title, a.url, a.source, a.feed_id,
       a.published_at, r.summary, r.method, r.importance, r.topics
FROM story_articles sa
JOIN articles a ON a.id = sa.article_id
{_LATEST_RESULT}
WHERE sa.story_id = ANY($1::bigint[])
ORDER BY sa.story_id, r.importance DESC NULLS LAST, a.published_at, a.id
"""

_FACETS = f"""
SELECT array(SELECT DISTINCT a.source FROM stories s
             JOIN story_articles sa ON sa.story_id = s.id
             JOIN articles a ON a.id = sa.article_id
             WHERE s.last_published_at >= $1 AND COALESCE(a.source, '') <> ''
               AND a.published_at >= $1
             ORDER BY 1) AS sources,
       array(SELECT DISTINCT t FROM stories s
             JOIN story_articles sa ON sa.story_id = s.id
             JOIN articles a ON a.id = sa.article_id
             {_LATEST_RESULT}
             CROSS JOIN LATERAL unnest(r.topics) t
             WHERE s.last_published_at >= $1 AND a.published_at >= $1
             ORDER BY 1) AS topics
"""


async def ranked_stories(
    pool: asyncpg.Pool | asyncpg.Connection,
    query: StoryQuery,
    *,
    since: datetime,
    now: datetime,
    half_life_h: float,
    source_boost: float,
    source_boost_cap: float,
) -> list[asyncpg.Record]:
    """One row per story that passes ``query``'s filters, best rank first, with its
    aggregates and rank factors (importance, n_sources, age_h, source/recency factors...)."""
    return await pool.fetch(
        _RANKED,
        since,
        query.min_importance,
        query.topic,
        query.source,
        half_life_h,
        source_boost,
        source_boost_cap,
        now,
        query.limit,
    )


async def story_members(
    pool: asyncpg.Pool | asyncpg.Connection, story_ids: list[int]
) -> list[asyncpg.Record]:
    """The articles of these stories with their latest summary, by story, most important
    first."""
    return await pool.fetch(_MEMBERS, story_ids)


async def story_facets(pool: asyncpg.Pool | asyncpg.Connection, since: datetime) -> asyncpg.Record:
    """The sources and topics (arrays) of the stories with an article since ``since``."""
    return await pool.fetchrow(_FACETS, since)
