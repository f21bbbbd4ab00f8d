"""The API models of search: the query of ``GET /v1/search`` and its response (also the
OpenAPI schema and what the digest page's search box reads)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_QUERY_CHARS = 500
MAX_OFFSET = 10_000
# Private-use characters that ts_headline puts around matched words, removed from the text
# beforehand: the snippet comes back as plain text plus offsets, never as markup from a feed.
MARK_START = "\ue000"
MARK_END = "\ue001"


class SearchQuery(BaseModel):
    """Query parameters of ``GET /v1/search``."""

    model_config = ConfigDict(extra="forbid")

    q: str = Field(
        min_length=1,
        max_length=MAX_QUERY_CHARS,
        description='Words to find, in web-search syntax: "a phrase" in quotes, OR between '
        "alternatives, -word to exclude. Stemmed (English) and accent-folded.",
    )
    since: datetime | None = Field(
        default=None, description="Published at or after (ISO 8601). Default: all history."
    )
    min_importance: float | None = Field(
        default=None,
        ge=0,
        le=100,
        description="Only summarized articles at least this important (0-100).",
    )
    topic: str | None = Field(
        default=None, min_length=1, max_length=100, description="A topic of its summary."
    )
    source: str | None = Field(
        default=None, min_length=1, max_length=1000, description="Its source (feed name)."
    )
    limit: int = Field(default=20, ge=1, description="Most hits returned.")
    offset: int = Field(
        default=0, ge=0, le=MAX_OFFSET, description="Hits to skip (the next page: next_offset)."
    )

    @field_validator("q")
    @classmethod
    def _words(cls, value: str) -> str:
        value = " ".join(value.split())
        if not value:
            raise ValueError("the query is empty; give at least one word")
        # NUL cannot go into a PostgreSQL text parameter; the highlight marks are ours
        if any(c in value for c in ("\x00", MARK_START, MARK_END)):
            raise ValueError("the query holds a control or private-use character")
        return value


class ScoreParts(BaseModel):
    relevance: float = Field(
        description="rank / (rank + 1), rank = ts_rank_cd over the article (title A, text B) "
        "+ ts_rank_cd over its latest summary (B): 0-1."
    )
    recency_factor: float = Field(description="0.5 + 0.5 x 0.5 ** (age_h / half-life).")
    importance_factor: float = Field(
        description="0.5 + 0.5 x importance / 100 (importance 50 while it has no summary)."
    )
    age_h: float = Field(description="Hours since it was published.")
    half_life_h: float


class SearchHit(BaseModel):
    id: int
    title: str
    url: str | None
    link: str = Field(description="The article's URL, else its record in the API.")
    source: str | None
    published: datetime
    summary: str | None = Field(description="None while it waits for its summary.")
    importance: float | None = Field(description="None while it waits for its summary.")
    topics: list[str]
    snippet: str = Field(
        description="A passage of the summary (when the query matches it) or of the text, "
        "plain text."
    )
    snippet_from: Literal["summary", "text"] = Field(description="Where the snippet comes from.")
    highlights: list[tuple[int, int]] = Field(
        description="[start, end) character offsets of the matched words in the snippet."
    )
    snippet_html: str = Field(
        description="The snippet HTML-escaped, matched words in <mark>: safe to insert as is."
    )
    score: float = Field(description="relevance x recency_factor x importance_factor.")
    score_parts: ScoreParts


class SearchResults(BaseModel):
    q: str
    count: int = Field(description="Hits on this page.")
    total: int = Field(description="Hits over all pages.")
    offset: int
    next_offset: int | None = Field(description="offset of the next page; None on the last.")
    note: str | None = Field(
        default=None, description="Why there are no hits when the query has no searchable word."
    )
    hits: list[SearchHit]
