"""The models of the digest feeds: their query (``GET /v1/stories``'s filters plus a
relative ``window``, what a feed URL needs: a fixed ``since`` would make a subscription grow
stale) and the JSON Feed 1.1 document (https://jsonfeed.org/version/1.1) with the
``_newsdesk`` extension object (importance, position, sources, every member article) on each
item."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, model_validator

from serving.stories.schemas import StoryQuery

JSON_FEED_VERSION = "https://jsonfeed.org/version/1.1"
MAX_WINDOW_H = 24 * 30


class FeedQuery(StoryQuery):
    """Query parameters of ``/feeds/digest.{rss,atom,json}``: those of ``GET /v1/stories``
    and ``window``."""

    window: float | None = Field(
        default=None,
        gt=0,
        le=MAX_WINDOW_H,
        description="Stories with an article in the last this many hours (the digest page's "
        "period: 24, 72, 168). Not with `since`. Default: 24.",
    )

    @model_validator(mode="after")
    def _one_window(self) -> FeedQuery:
        if self.window is not None and self.since is not None:
            raise ValueError("give since or window, not both")
        return self


class JsonFeedAuthor(BaseModel):
    name: str
    url: str | None = None


class FeedArticle(BaseModel):
    """One article of a story, in the ``_newsdesk`` extension."""

    id: int
    title: str
    url: str = Field(description="Its link (absolute).")
    source: str
    published: datetime
    importance: float | None


class NewsdeskExtension(BaseModel):
    """``_newsdesk`` on each item: what a feed has no field for."""

    story_id: int
    importance: float = Field(description="Highest importance among its articles (0-100).")
    position: int = Field(description="Its place in the digest: 1 is the top story.")
    method: str = Field(description="abstractive, or extractive (the article's own sentences).")
    n_articles: int
    n_sources: int
    sources: list[str]
    articles: list[FeedArticle]


class JsonFeedItem(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    id: str = Field(description="Stable: the story keeps it as it grows.")
    url: str
    title: str
    content_text: str
    content_html: str
    summary: str
    date_published: datetime
    date_modified: datetime = Field(description="Moves when the story grows or changes.")
    authors: list[JsonFeedAuthor]
    tags: list[str]
    external_url: str | None = None
    newsdesk: NewsdeskExtension = Field(alias="_newsdesk", serialization_alias="_newsdesk")


class JsonFeed(BaseModel):
    """A JSON Feed 1.1 document."""

    version: str = JSON_FEED_VERSION
    title: str
    home_page_url: str
    feed_url: str
    description: str
    language: str = "en"
    authors: list[JsonFeedAuthor]
    items: list[JsonFeedItem]
