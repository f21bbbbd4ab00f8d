"""The story listing of ``GET /v1/stories``: the ranked rows of :mod:`serving.stories.store`
made into :class:`serving.stories.schemas.StoryList` (each story's lead article, its sources
in order of appearance, its top topics, its ``why`` line) with the settings' ranking knobs.
The rank itself is computed in SQL (see :mod:`serving.stories`)."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

import asyncpg

from serving.settings import ServingSettings
from serving.stories.schemas import (
    Ranking,
    RankParts,
    Story,
    StoryArticle,
    StoryFacets,
    StoryList,
    StoryQuery,
)
from serving.stories.store import ranked_stories, story_facets, story_members
from serving.web.labels import why_line

DEFAULT_WINDOW = timedelta(hours=24)


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
    :mod:`serving.stories`), each with its articles, most important first."""
    now = now or datetime.now(UTC)
    since = query.since or now - DEFAULT_WINDOW
    if since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    rows = await ranked_stories(
        pool,
        query,
        since=since,
        now=now,
        half_life_h=half_life_h,
        source_boost=source_boost,
        source_boost_cap=max(1.0, source_boost_cap),
    )
    story_ids = [r["story_id"] for r in rows]
    members: dict[int, list[StoryArticle]] = {sid: [] for sid in story_ids}
    topic_counts: dict[int, Counter[str]] = {sid: Counter() for sid in story_ids}
    if story_ids:
        for m in await story_members(pool, story_ids):
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
    facets_row = await story_facets(pool, since)
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


def story_list_args(settings: ServingSettings) -> dict[str, float]:
    """The ranking knobs of :func:`list_stories` from the settings."""
    return {
        "half_life_h": settings.api_rank_half_life_h,
        "source_boost": settings.story_source_boost,
        "source_boost_cap": settings.story_source_boost_cap,
    }
