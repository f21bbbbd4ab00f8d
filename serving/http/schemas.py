"""Request and response bodies of the HTTP API (the Article and Result contracts are reused).

Every error reply has the same shape, :class:`ErrorResponse`: a machine-readable ``code``, a
message naming the problem, the request id (also in the ``X-Request-ID`` header) and, for
validation errors, the offending fields.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from core.article import Article
from serving.model.result import Outcome, Result

# serving.model.result.Outcome as the API reads and documents it: ``kind`` tells which model it is.
TaggedOutcome = Annotated[Outcome, Field(discriminator="kind")]


class ErrorInfo(BaseModel):
    code: str = Field(description="Machine-readable, e.g. malformed_json, validation_error.")
    message: str = Field(description="What is wrong, in words.")
    request_id: str
    details: list[dict[str, Any]] | None = Field(
        default=None, description="Validation errors: loc (where), msg, type."
    )


class ErrorResponse(BaseModel):
    error: ErrorInfo


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    articles: list[Article] = Field(
        min_length=1, description="Articles to summarize; at most NEWSDESK_API_MAX_BATCH_ARTICLES."
    )


class BatchResponse(BaseModel):
    results: list[TaggedOutcome] = Field(
        description="One outcome per article, in request order: a Result or an ArticleError "
        "(``kind`` tells which)."
    )


class StreamLine(BaseModel):
    """One line of the NDJSON stream, written as soon as that article's outcome is ready."""

    index: int = Field(ge=0, description="The article's position in the request.")
    outcome: TaggedOutcome


class ArticleListQuery(BaseModel):
    """Query parameters of ``GET /v1/articles``."""

    model_config = ConfigDict(extra="forbid")

    since: datetime | None = Field(
        default=None, description="Published at or after (ISO 8601). Default: 7 days ago."
    )
    min_importance: float | None = Field(default=None, ge=0, le=100)
    topic: str | None = Field(default=None, min_length=1, max_length=100)
    limit: int = Field(default=50, ge=1)


class ArticleItem(BaseModel):
    """A summarized article in a listing (without its full text)."""

    id: int
    feed_id: int | None
    title: str
    url: str | None
    source: str | None
    author: str | None
    published: datetime | None
    language: str | None
    summary: str
    method: Literal["abstractive", "extractive"] = Field(
        description="abstractive: the model's summary; extractive: the article's own "
        "sentences (the model's summary failed the verifier, see result.verification)."
    )
    importance: float
    topics: list[str]
    rank: float = Field(description="importance x 0.5 ** (age_h / half-life): the sort key.")
    summarized_at: datetime | None
    result: Result


class ArticleList(BaseModel):
    since: datetime
    count: int
    articles: list[ArticleItem]


class FailureInfo(BaseModel):
    code: str | None
    message: str | None
    attempts: int


class ArticleDetail(BaseModel):
    article: Article
    status: Literal["summarized", "pending", "failed"]
    result: Result | None
    error: FailureInfo | None = None
    summarized_at: datetime | None = None


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Check(BaseModel):
    ok: bool
    detail: str


class Readiness(BaseModel):
    ready: bool
    checks: dict[str, Check]
