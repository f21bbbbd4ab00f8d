"""All SQL of search: the ranked hits of a query over the ``search_tsv`` / ``summary_tsv``
columns of migration 007, with their highlighted snippets.

One round trip per search (another when it finds nothing: was there a word to look for?):
the matching articles come from the two GIN indexes (the article's words, and the summaries'
words), are rechecked against the article's *latest* summary, filtered, scored, counted and
cut to the page; only then is ``ts_headline`` (which re-parses the text) run, on the page's
rows alone, over at most :data:`HEADLINE_CHARS` of each text.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass

import asyncpg

from serving.search.schemas import (
    MARK_END,
    MARK_START,
    ScoreParts,
    SearchHit,
    SearchQuery,
    SearchResults,
)

TS_CONFIG = "newsdesk_search"  # migration 007: English stemming over unaccent
HEADLINE_CHARS = 20_000
# A summary (a few sentences) is shown whole; a text by its best two passages.
_MARKS_OPTION = f"StartSel={MARK_START}, StopSel={MARK_END}"
SUMMARY_HEADLINE = f"{_MARKS_OPTION}, HighlightAll=true"
TEXT_HEADLINE = (
    f'{_MARKS_OPTION}, MaxWords=30, MinWords=12, MaxFragments=2, FragmentDelimiter=" … "'
)

# Every hit is scored to find the best page, so the cost grows with the hits: a word found in
# most of months of history is cancelled after this long (the route answers 422, "narrow it").
SEARCH_TIMEOUT_S = 10.0
# An article waiting for its summary ranks as a middle one.
UNSUMMARIZED_IMPORTANCE = 50.0
_MARKS = re.compile(f"([{MARK_START}{MARK_END}])")
EMPTY_NOTE = (
    "the query has no searchable word (only stop words such as 'the' or 'and', or "
    "punctuation): nothing to look for"
)

SEARCH_SQL = f"""
WITH query AS MATERIALIZED (SELECT websearch_to_tsquery('{TS_CONFIG}', $1) AS q),
matched AS (
    -- by_article: the article's own words match (exact: the bitmap heap scan rechecks)
    SELECT id, bool_or(by_article) AS by_article FROM (
        SELECT a.id, true AS by_article FROM articles a, query
        WHERE a.search_tsv @@ query.q AND a.duplicate_of IS NULL
          AND ($2::timestamptz IS NULL OR a.published_at >= $2)
        UNION ALL
        SELECT r.article_id, false FROM results r, query
        WHERE r.summary_tsv @@ query.q AND r.status = 'ok' AND r.article_id IS NOT NULL
    ) u GROUP BY id
),
scored AS (
    SELECT a.id, a.published_at, r.result_id, r.importance,
           (ts_rank_cd(a.search_tsv, query.q)
            + COALESCE(ts_rank_cd(r.summary_tsv, query.q), 0))::float8 AS raw_rank,
           GREATEST(0.0, EXTRACT(EPOCH FROM (now() - a.published_at)) / 3600.0)::float8 AS age_h
    FROM matched m
    JOIN articles a ON a.id = m.id
    CROSS JOIN query
    LEFT JOIN LATERAL (
        SELECT r.id AS result_id, importance, topics, summary_tsv FROM results r
        WHERE r.article_id = a.id AND r.status = 'ok'
        ORDER BY r.updated_at DESC LIMIT 1
    ) r ON true
    WHERE a.duplicate_of IS NULL
      -- matched by a summary alone: the article's latest summary must be the one
      AND (m.by_article OR r.summary_tsv @@ query.q)
      AND ($2::timestamptz IS NULL OR a.published_at >= $2)
      AND ($3::real IS NULL OR r.importance >= $3)
      AND ($4::text IS NULL
           OR EXISTS (SELECT 1 FROM unnest(r.topics) t WHERE lower(t) = lower($4)))
      AND ($5::text IS NULL OR lower(COALESCE(a.source, '')) = lower($5))
),
factored AS (
    SELECT s.*,
           raw_rank / (raw_rank + 1.0) AS relevance,
           0.5 + 0.5 * power(0.5, age_h / $8) AS recency_factor,
           0.5 + 0.5 * COALESCE(importance, {UNSUMMARIZED_IMPORTANCE}) / 100.0
               AS importance_factor
    FROM scored s
),
page AS (
    SELECT f.*, relevance * recency_factor * importance_factor AS score,
           count(*) OVER () AS total
    FROM factored f
    ORDER BY score DESC, published_at DESC, id DESC
    LIMIT $6 OFFSET $7
),
shown AS (  -- the page's rows only: their text, summary and where the snippet comes from
    SELECT page.*, a.title, a.url, a.source, a.text, r.summary, r.topics,
           COALESCE(r.summary_tsv @@ query.q, false) AS in_summary
    FROM page
    JOIN articles a ON a.id = page.id
    CROSS JOIN query
    LEFT JOIN results r ON r.id = page.result_id
)
SELECT shown.id, shown.title, shown.url, shown.source, shown.published_at, shown.summary,
       shown.importance, shown.topics, shown.in_summary, shown.relevance,
       shown.recency_factor, shown.importance_factor, shown.age_h, shown.score, shown.total,
       ts_headline('{TS_CONFIG}',
                   translate(CASE WHEN shown.in_summary THEN shown.summary
                                  ELSE left(shown.text, {HEADLINE_CHARS}) END,
                             $9, ''),
                   query.q,
                   CASE WHEN shown.in_summary THEN $10 ELSE $11 END) AS snippet
FROM shown CROSS JOIN query
ORDER BY shown.score DESC, shown.published_at DESC, shown.id DESC
"""


@dataclass(frozen=True, slots=True)
class Search:
    """A :class:`SearchQuery` resolved with the settings' ranking (the route builds it)."""

    query: SearchQuery
    half_life_h: float = 24.0
    timeout_s: float = SEARCH_TIMEOUT_S


class SearchTooBroad(Exception):
    """The search ran past its time limit (cancelled in PostgreSQL): too many hits to score."""


async def has_words(db: asyncpg.Pool | asyncpg.Connection, q: str) -> bool:
    """Whether ``q`` parses to something to look for (not only stop words or punctuation)."""
    nodes = await db.fetchval(f"SELECT numnode(websearch_to_tsquery('{TS_CONFIG}', $1))", q)
    return bool(nodes)


async def search(db: asyncpg.Pool | asyncpg.Connection, request: Search) -> SearchResults:
    """The page of hits of ``request`` (see :mod:`serving.search` for the ranking)."""
    query = request.query
    rows = await _page(db, request, limit=query.limit, offset=query.offset)
    total = int(rows[0]["total"]) if rows else 0
    if not rows and not await has_words(db, query.q):
        return SearchResults(
            q=query.q,
            count=0,
            total=0,
            offset=query.offset,
            next_offset=None,
            note=EMPTY_NOTE,
            hits=[],
        )
    if not rows and query.offset:
        # past the last page: no row carries the count; count on a first page of one
        first = await _page(db, request, limit=1, offset=0)
        total = int(first[0]["total"]) if first else 0
    hits = [_hit(r, request.half_life_h) for r in rows]
    end = query.offset + len(hits)
    return SearchResults(
        q=query.q,
        count=len(hits),
        total=total,
        offset=query.offset,
        next_offset=end if end < total else None,
        hits=hits,
    )


async def _page(
    db: asyncpg.Pool | asyncpg.Connection, request: Search, *, limit: int, offset: int
) -> list[asyncpg.Record]:
    args = search_args(request, limit=limit, offset=offset)
    try:
        # asyncpg cancels the statement in PostgreSQL when the time is up
        return await db.fetch(SEARCH_SQL, *args, timeout=request.timeout_s)
    except TimeoutError:
        raise SearchTooBroad(
            f"the search took over {request.timeout_s:g} s: too many articles match "
            f"{request.query.q!r}; add words, a since date or a filter"
        ) from None


def search_args(request: Search, *, limit: int, offset: int) -> list[object]:
    """The parameters of :data:`SEARCH_SQL` (also for an EXPLAIN of it)."""
    q = request.query
    return [
        q.q,
        q.since,
        q.min_importance,
        q.topic,
        q.source,
        limit,
        offset,
        request.half_life_h,
        MARK_START + MARK_END,
        SUMMARY_HEADLINE,
        TEXT_HEADLINE,
    ]


def _hit(r: asyncpg.Record, half_life_h: float) -> SearchHit:
    snippet, highlights, snippet_html = marked_snippet(r["snippet"] or "")
    return SearchHit(
        id=r["id"],
        title=r["title"],
        url=r["url"],
        link=r["url"] or f"/v1/articles/{r['id']}",
        source=r["source"],
        published=r["published_at"],
        summary=r["summary"],
        importance=r["importance"],
        topics=list(r["topics"] or []),
        snippet=snippet,
        snippet_from="summary" if r["in_summary"] else "text",
        highlights=highlights,
        snippet_html=snippet_html,
        score=round(r["score"], 6),
        score_parts=ScoreParts(
            relevance=round(r["relevance"], 6),
            recency_factor=round(r["recency_factor"], 6),
            importance_factor=round(r["importance_factor"], 6),
            age_h=round(r["age_h"], 3),
            half_life_h=half_life_h,
        ),
    )


def marked_snippet(marked: str) -> tuple[str, list[tuple[int, int]], str]:
    """``ts_headline``'s output (matched words between :data:`MARK_START` and
    :data:`MARK_END`) as plain text, the marked spans' offsets, and escaped HTML with
    ``<mark>``."""
    plain: list[str] = []
    parts: list[str] = []
    spans: list[tuple[int, int]] = []
    length = 0
    start: int | None = None
    for piece in _MARKS.split(marked):
        if piece == MARK_START:
            start = length
            parts.append("<mark>")
        elif piece == MARK_END:
            if start is not None:
                spans.append((start, length))
                parts.append("</mark>")
            start = None
        elif piece:
            plain.append(piece)
            parts.append(html.escape(piece, quote=False))
            length += len(piece)
    if start is not None:  # an unclosed mark (ts_headline closes each): close it
        spans.append((start, length))
        parts.append("</mark>")
    return "".join(plain), spans, "".join(parts)
