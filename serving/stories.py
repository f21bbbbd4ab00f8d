"""Stories: same-story articles from different feeds grouped into one, ranked for the digest.

**Grouping** (incremental, :class:`StoryAssigner`): each stored article, oldest first, joins a
story once:

1. ``duplicate``: ingestion marked it a copy of an article (same content hash from another
   feed, ``articles.duplicate_of``) that already belongs to a story: it joins that story;
2. ``similar``: else its sentence embedding (all-MiniLM-L6-v2 over title + lead, the very
   embedding code of :mod:`serving.importance`) is compared with the centroids of the stories
   alive within ``story_window_h`` of its publication time; if the nearest is at least
   ``story_similarity_threshold`` (cosine) it joins that story;
3. ``founder``: else it starts a story of its own.

The search is exact (every story of the window): with pgvector in SQL (``<=>``), without it
in numpy over the window's centroids, read once per batch. No approximate (HNSW) index: it
would filter by time *after* picking its nearest candidates and could miss the right story.
One assigner works at a time per database (a transaction-scoped advisory lock), so two app
replicas never split one story in two. Embeddings and story ids live in ``story_articles``
and ``stories`` (migration 005).

**Ranking** (:func:`list_stories`, computed at read time, so a late or re-done summary counts
at once)::

    rank = importance x min(1 + story_source_boost x (sources - 1), story_source_boost_cap)
                      x 0.5 ** (hours since its latest article / api_rank_half_life_h)

``importance`` is the highest importance (0-100, the engine's Result) among its summarized
articles; ``sources`` counts distinct source names (feed titles). Each story carries a
``why`` line ("importance 82 · 4 sources · 3 h ago") and the factors behind it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import asyncpg
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ingestion.article import Article
from ingestion.settings import Settings
from ingestion.store import article_from_row

log = logging.getLogger(__name__)

EMBEDDING_DIM = 384  # all-MiniLM-L6-v2
STORIES_LOCK_KEY = 7_231_005  # advisory-lock id of story assignment (005: stories)
DEFAULT_WINDOW = timedelta(hours=24)
Backend = Literal["pgvector", "array"]
Method = Literal["abstractive", "extractive"]

# --- embeddings -----------------------------------------------------------------------------


class StoryEmbedder:
    """The engine's sentence embeddings (:class:`serving.importance.ImportanceScorer`) for
    stories: loaded on first use, thread-safe (embedding runs in a worker thread)."""

    def __init__(self) -> None:
        self._scorer: Any = None
        self._lock = threading.Lock()

    def _get(self) -> Any:
        with self._lock:
            if self._scorer is None:
                from serving.importance import ImportanceScorer

                self._scorer = ImportanceScorer()
            return self._scorer

    def embed(self, articles: list[Article]) -> np.ndarray:
        """One L2-normalised row per article (title + lead, as the importance prior sees it)."""
        from serving.importance import article_text

        if not articles:
            return np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
        scorer = self._get()
        with self._lock:  # one forward pass at a time on the shared model
            vectors = scorer.embed([article_text(a) for a in articles])
        return vectors.numpy().astype(np.float32)


# --- storage --------------------------------------------------------------------------------


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


def _unit(vector: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm > 0 else vector


_PENDING = """
SELECT a.id, a.feed_id, a.title, a.text, a.url, a.guid, a.source, a.author, a.published_at,
       a.language, a.duplicate_of
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


@dataclass
class AssignReport:
    assigned: int = 0
    by: Counter[str] = field(default_factory=Counter)  # founder / duplicate / similar
    stories: set[int] = field(default_factory=set)


class _Candidates:
    """The window's stories in memory (the numpy path): centroids and time spans, in arrays
    that grow by doubling, so a batch that founds many stories copies little."""

    def __init__(
        self, ids: list[int], centroids: np.ndarray, first: list[float], last: list[float]
    ) -> None:
        n = len(ids)
        capacity = max(16, 2 * n)
        self.n = n
        self.ids = np.zeros(capacity, dtype=np.int64)
        self.centroids = np.zeros((capacity, EMBEDDING_DIM), dtype=np.float32)
        self.units = np.zeros((capacity, EMBEDDING_DIM), dtype=np.float32)  # for the search
        self.first = np.zeros(capacity)  # epoch seconds
        self.last = np.zeros(capacity)
        if n:
            self.ids[:n] = ids
            self.centroids[:n] = centroids
            norms = np.linalg.norm(self.centroids[:n], axis=1, keepdims=True)
            self.units[:n] = self.centroids[:n] / np.where(norms > 0, norms, 1.0)
            self.first[:n] = first
            self.last[:n] = last
        self._where = {int(i): k for k, i in enumerate(ids)}

    def add(self, story_id: int, centroid: np.ndarray, at: float) -> None:
        if self.n == len(self.ids):
            grow = len(self.ids)
            self.ids = np.concatenate([self.ids, np.zeros(grow, dtype=np.int64)])
            self.centroids = np.vstack([self.centroids, np.zeros_like(self.centroids)])
            self.units = np.vstack([self.units, np.zeros_like(self.units)])
            self.first = np.concatenate([self.first, np.zeros(grow)])
            self.last = np.concatenate([self.last, np.zeros(grow)])
        k = self.n
        self.ids[k], self.centroids[k], self.first[k], self.last[k] = story_id, centroid, at, at
        self.units[k] = _unit(centroid)
        self._where[story_id] = k
        self.n += 1

    def update(self, story_id: int, centroid: np.ndarray, at: float) -> None:
        k = self._where.get(story_id)
        if k is None:
            self.add(story_id, centroid, at)
            return
        self.centroids[k] = centroid
        self.units[k] = _unit(centroid)
        self.first[k] = min(self.first[k], at)
        self.last[k] = max(self.last[k], at)

    def nearest(self, vector: np.ndarray, at: float, window_s: float) -> tuple[int, float] | None:
        """(story id, cosine) of the nearest story alive within the window of ``at``."""
        n = self.n
        if n == 0:
            return None
        alive = (self.last[:n] >= at - window_s) & (self.first[:n] <= at + window_s)
        if not alive.any():
            return None
        sims = self.units[:n] @ vector
        sims = np.where(alive, sims, -np.inf)
        best = int(np.argmax(sims))
        return int(self.ids[best]), float(sims[best])


async def assign_articles(
    conn: asyncpg.Connection,
    articles: list[Article],
    embeddings: np.ndarray,
    *,
    threshold: float,
    window_h: float,
) -> AssignReport:
    """Give each article a story (see the module docstring). Runs in one transaction under
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
        # originals before their copies, then by publication time
        order = sorted(
            range(len(articles)),
            key=lambda i: (
                articles[i].duplicate_of is not None,
                articles[i].published or datetime.now(UTC),
                articles[i].id or 0,
            ),
        )
        times = [(a.published or datetime.now(UTC)) for a in articles]
        candidates: _Candidates | None = None
        if backend == "array":
            lo = min(times) - timedelta(seconds=window_s)
            hi = max(times) + timedelta(seconds=window_s)
            rows = await conn.fetch(
                "SELECT id, centroid, first_published_at, last_published_at "
                "FROM stories WHERE last_published_at >= $1 AND first_published_at <= $2",
                lo,
                hi,
            )
            candidates = _Candidates(
                ids=[r["id"] for r in rows],
                centroids=np.asarray([r["centroid"] for r in rows], dtype=np.float32).reshape(
                    len(rows), EMBEDDING_DIM
                ),
                first=[r["first_published_at"].timestamp() for r in rows],
                last=[r["last_published_at"].timestamp() for r in rows],
            )
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
                if found is not None and found[1] >= threshold:
                    story_id, similarity, joined_by = found[0], found[1], "similar"
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
                n = int(row["n_articles"])
                centroid = (old * n + vector) / (n + 1)
                if joined_by == "duplicate":
                    similarity = float(_unit(old) @ vector)
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


class StoryAssigner:
    """Assigns stored articles to stories in the background (the summarization loop's
    replica starts it beside the loop). Nothing stops it but :meth:`stop`: a failing round
    is logged, counted and retried."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        settings: Settings,
        embedder: StoryEmbedder | None = None,
    ) -> None:
        self.pool = pool
        self.settings = settings
        self.embedder = embedder or StoryEmbedder()
        self.assigned: Counter[str] = Counter()
        self.rounds = 0
        self.last_error: str | None = None
        self.embed_s = 0.0
        self._stop = asyncio.Event()

    async def assign_pending(self) -> AssignReport:
        """One round: up to ``story_assign_batch`` unassigned articles, embedded and assigned."""
        s = self.settings
        articles = await pending_articles(
            self.pool, max_age_h=s.summarize_loop_max_age_h, limit=s.story_assign_batch
        )
        if not articles:
            return AssignReport()
        started = time.perf_counter()
        vectors = await asyncio.to_thread(self.embedder.embed, articles)
        self.embed_s += time.perf_counter() - started
        async with self.pool.acquire() as conn:
            report = await assign_articles(
                conn,
                articles,
                vectors,
                threshold=s.story_similarity_threshold,
                window_h=s.story_window_h,
            )
        self.rounds += 1
        self.assigned.update(report.by)
        return report

    async def run_forever(self) -> None:
        while not self._stop.is_set():
            try:
                report = await self.assign_pending()
                self.last_error = None
            except Exception as exc:  # database down, a bad row...: log, wait, try again
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("story assignment failed: %s", self.last_error)
                report = AssignReport()
            if report.assigned < self.settings.story_assign_batch:
                try:
                    await asyncio.wait_for(
                        self._stop.wait(), timeout=self.settings.story_assign_interval_s
                    )
                except TimeoutError:
                    pass

    def stop(self) -> None:
        self._stop.set()

    def status(self) -> dict[str, Any]:
        return {
            "rounds": self.rounds,
            "assigned": dict(self.assigned),
            "embed_s": round(self.embed_s, 2),
            "last_error": self.last_error,
        }


# --- the listing ----------------------------------------------------------------------------


class StoryQuery(BaseModel):
    """Query parameters of ``GET /v1/stories`` (and of the digest page's requests)."""

    model_config = ConfigDict(extra="forbid")

    since: datetime | None = Field(
        default=None,
        description="Stories with an article published at or after this time (ISO 8601). "
        "Default: 24 hours ago.",
    )
    min_importance: float | None = Field(
        default=None, ge=0, le=100, description="Only stories at least this important (0-100)."
    )
    topic: str | None = Field(
        default=None, min_length=1, max_length=100, description="A topic of one of its articles."
    )
    source: str | None = Field(
        default=None, min_length=1, max_length=1000, description="A source of one of its articles."
    )
    limit: int = Field(default=30, ge=1, description="Most stories returned.")


class RankParts(BaseModel):
    importance: float = Field(description="Highest importance among its articles (0-100).")
    source_factor: float = Field(description="min(1 + boost x (sources - 1), cap).")
    recency_factor: float = Field(description="0.5 ** (age_h / half-life).")
    age_h: float = Field(description="Hours since its latest article was published.")
    half_life_h: float


class StoryArticle(BaseModel):
    id: int
    title: str
    url: str | None
    link: str = Field(description="The article's URL, else its record in the API.")
    source: str | None
    published: datetime
    summary: str | None = Field(description="None while it waits for its summary.")
    method: Method | None = Field(
        default=None,
        description="The summary's Result method: abstractive (the model's) or extractive "
        "(the article's own sentences: the model's summary failed the verifier).",
    )
    importance: float | None
    topics: list[str]
    joined_by: str = Field(description="founder, duplicate (same text) or similar (embedding).")
    similarity: float = Field(description="Cosine to the story when it joined.")


class Story(BaseModel):
    id: int
    title: str = Field(description="The title of its most important article.")
    summary: str
    method: Method = Field(
        default="abstractive", description="The summary's method (see StoryArticle.method)."
    )
    link: str
    importance: float
    mean_importance: float
    rank: float
    rank_parts: RankParts
    why: str = Field(description='Why it ranks here: "importance 82 · 4 sources · 3 h ago".')
    sources: list[str]
    topics: list[str]
    n_articles: int
    n_sources: int
    first_published: datetime
    last_published: datetime
    articles: list[StoryArticle]


class StoryFacets(BaseModel):
    sources: list[str] = Field(description="Sources with stories in the window.")
    topics: list[str] = Field(description="Topics with stories in the window.")


class Ranking(BaseModel):
    """The knobs of the ranking in force (settings), for the page's explanation."""

    half_life_h: float
    source_boost: float
    source_boost_cap: float


class StoryList(BaseModel):
    since: datetime
    generated_at: datetime
    count: int
    stories: list[Story]
    facets: StoryFacets
    ranking: Ranking


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


def age_text(hours: float) -> str:
    """'just now', '25 min ago', '3 h ago', '2 d ago'."""
    minutes = hours * 60
    if minutes < 1:
        return "just now"
    if minutes < 60:
        return f"{int(minutes)} min ago"
    if hours < 48:
        return f"{int(hours)} h ago"
    return f"{int(hours // 24)} d ago"


def why_line(importance: float, n_sources: int, age_h: float) -> str:
    """The human-readable reason of a story's place: 'importance 82 · 4 sources · 3 h ago'."""
    sources = "1 source" if n_sources == 1 else f"{n_sources} sources"
    return f"importance {round(importance)} · {sources} · {age_text(age_h)}"


def _link(article_id: int, url: str | None) -> str:
    return url or f"/v1/articles/{article_id}"


async def list_stories(
    pool: asyncpg.Pool | asyncpg.Connection,
    query: StoryQuery,
    *,
    half_life_h: float,
    source_boost: float,
    source_boost_cap: float,
    now: datetime | None = None,
) -> StoryList:
    """Stories with an article since ``query.since`` (default: the last 24 h), ranked (see
    the module docstring), each with its articles, most important first."""
    now = now or datetime.now(UTC)
    since = query.since or now - DEFAULT_WINDOW
    if since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    rows = await pool.fetch(
        _RANKED,
        since,
        query.min_importance,
        query.topic,
        query.source,
        half_life_h,
        source_boost,
        max(1.0, source_boost_cap),
        now,
        query.limit,
    )
    story_ids = [r["story_id"] for r in rows]
    members: dict[int, list[StoryArticle]] = {sid: [] for sid in story_ids}
    topic_counts: dict[int, Counter[str]] = {sid: Counter() for sid in story_ids}
    if story_ids:
        for m in await pool.fetch(_MEMBERS, story_ids):
            members[m["story_id"]].append(
                StoryArticle(
                    id=m["id"],
                    title=m["title"] or "",
                    url=m["url"],
                    link=_link(m["id"], m["url"]),
                    source=m["source"],
                    published=m["published_at"],
                    summary=m["summary"],
                    method=m["method"],
                    importance=m["importance"],
                    topics=list(m["topics"] or []),
                    joined_by=m["joined_by"],
                    similarity=m["similarity"],
                )
            )
            topic_counts[m["story_id"]].update(m["topics"] or [])
    facets_row = await pool.fetchrow(_FACETS, since)
    stories = []
    for r in rows:
        sid = r["story_id"]
        arts = members[sid]
        lead = next(a for a in arts if a.summary is not None)
        sources: list[str] = []
        for a in sorted(arts, key=lambda a: a.published):
            name = a.source or "unnamed feed"
            if name not in sources:
                sources.append(name)
        age_h = float(r["age_h"])
        n_sources = int(r["n_sources"])
        importance = float(r["importance"])
        stories.append(
            Story(
                id=sid,
                title=lead.title or (lead.summary or "")[:120],
                summary=lead.summary or "",
                method=lead.method or "abstractive",
                link=lead.link,
                importance=round(importance, 2),
                mean_importance=round(float(r["mean_importance"]), 2),
                rank=round(float(r["rank"]), 3),
                rank_parts=RankParts(
                    importance=round(importance, 2),
                    source_factor=round(float(r["source_factor"]), 3),
                    recency_factor=round(float(r["recency_factor"]), 3),
                    age_h=round(age_h, 2),
                    half_life_h=half_life_h,
                ),
                why=why_line(importance, n_sources, age_h),
                sources=sources,
                topics=[t for t, _ in topic_counts[sid].most_common(3)],
                n_articles=int(r["n_articles"]),
                n_sources=n_sources,
                first_published=r["first_published"],
                last_published=r["last_published"],
                articles=arts,
            )
        )
    facets = StoryFacets(
        sources=list(facets_row["sources"] or []), topics=list(facets_row["topics"] or [])
    )
    return StoryList(
        since=since,
        generated_at=now,
        count=len(stories),
        stories=stories,
        facets=facets,
        ranking=Ranking(
            half_life_h=half_life_h,
            source_boost=source_boost,
            source_boost_cap=max(1.0, source_boost_cap),
        ),
    )


def story_list_args(settings: Settings) -> dict[str, float]:
    """The ranking knobs of :func:`list_stories` from the settings."""
    return {
        "half_life_h": settings.api_rank_half_life_h,
        "source_boost": settings.story_source_boost,
        "source_boost_cap": settings.story_source_boost_cap,
    }
