"""The Article: the one model of a news article, shared by the store, the API and training."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

from pydantic import BaseModel, ConfigDict, Field, computed_field, field_validator

MAX_TITLE_CHARS = 1_000


def normalize_for_hash(title: str, text: str) -> str:
    """Whitespace- and case-insensitive form of an article's content, the input of its hash."""
    return " ".join(title.split()).casefold() + "\n" + " ".join(text.split()).casefold()


def content_hash(title: str, text: str) -> str:
    return hashlib.sha256(normalize_for_hash(title, text).encode("utf-8")).hexdigest()


class Article(BaseModel):
    """A news article: clean text plus where it came from.

    ``title`` and ``text`` are plain text (no markup). Everything else is optional so the
    same model serves a stored article (with ``id`` and ``feed_id``) and one posted to the
    API. ``content_hash`` is derived, never supplied: it keys de-duplication across feeds
    and the summary cache.
    """

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    id: int | None = None
    feed_id: int | None = None
    title: str = Field(default="", max_length=MAX_TITLE_CHARS)
    text: str = ""
    url: str | None = Field(default=None, max_length=4_096)
    guid: str | None = Field(default=None, max_length=4_096)
    source: str | None = Field(default=None, max_length=1_000, description="Feed or site name.")
    author: str | None = Field(default=None, max_length=1_000)
    published: datetime | None = Field(default=None, description="UTC publication time.")
    language: str | None = Field(default=None, max_length=16)
    duplicate_of: int | None = Field(
        default=None, description="Id of the first stored article with identical content."
    )

    @field_validator("published")
    @classmethod
    def _to_utc(cls, value: datetime | None) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def content_hash(self) -> str:
        return content_hash(self.title, self.text)
