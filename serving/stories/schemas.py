"""The API models of stories: the query of ``GET /v1/stories`` and its response (also the
OpenAPI schema and what the digest page reads)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Method = Literal["abstractive", "extractive"]


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
