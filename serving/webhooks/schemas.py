"""The models of webhooks: the bodies of ``/v1/webhooks`` (also the OpenAPI schema and what the
CLI prints) and the event JSON a receiver gets (:class:`WebhookEvent`, documented in
docs/webhooks.md)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

EventKind = Literal["story.matched", "story.grew"]
GrowthMetric = Literal["articles", "sources"]
DeliveryState = Literal["pending", "delivered", "given_up"]
Term = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]


class WebhookFilter(BaseModel):
    """Which stories a webhook hears about; every part left empty matches every story.
    Same meaning as the filters of ``GET /v1/stories``: a story's importance is its most
    important article's, and a topic or source matches when one of its articles has it
    (case-insensitive)."""

    min_importance: float | None = Field(
        default=None, ge=0, le=100, description="Only stories at least this important (0-100)."
    )
    topics: list[Term] = Field(
        default_factory=list, max_length=50, description="Any of these topics (none: any)."
    )
    sources: list[Term] = Field(
        default_factory=list, max_length=50, description="Any of these sources (none: any)."
    )


class WebhookCreate(WebhookFilter):
    """Body of ``POST /v1/webhooks``."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(
        min_length=1, max_length=2048, description="http(s) URL the events are POSTed to."
    )
    secret: str | None = Field(
        default=None,
        min_length=16,
        max_length=256,
        description="HMAC key of the signatures; omitted: one is generated and returned once.",
    )
    description: str = Field(default="", max_length=200, description="A note for people.")
    growth_metric: GrowthMetric = Field(
        default="articles", description="What story.grew counts: articles or sources."
    )
    growth_step: int | None = Field(
        default=None,
        ge=1,
        le=100_000,
        description="story.grew once the story has this many more (growth_metric) than at "
        "the last event; default NEWSDESK_WEBHOOK_GROWTH_STEP.",
    )


class Webhook(WebhookFilter):
    """A subscription as listed (never its secret)."""

    id: int
    url: str
    description: str
    growth_metric: GrowthMetric
    growth_step: int
    created_at: datetime
    pending: int = Field(default=0, description="Events not yet delivered nor given up.")
    delivered: int = Field(default=0, description="Events delivered.")
    given_up: int = Field(default=0, description="Events given up after the last attempt.")


class WebhookCreated(Webhook):
    """The reply to ``POST /v1/webhooks``: the only time the secret is shown."""

    secret: str


class WebhookList(BaseModel):
    count: int
    webhooks: list[Webhook]


class DeliveryAttempt(BaseModel):
    attempt: int
    status_code: int | None = Field(description="The receiver's HTTP status; null: no answer.")
    error: str | None
    outcome: Literal["delivered", "retry", "given_up"]
    started_at: datetime
    duration_ms: float


class Delivery(BaseModel):
    """One event for one webhook, with every attempt to deliver it."""

    event_id: str
    kind: EventKind
    story_id: int
    state: DeliveryState
    attempts: int
    last_status_code: int | None
    last_error: str | None
    created_at: datetime
    next_attempt_at: datetime | None = Field(description="While pending: when it is due.")
    delivered_at: datetime | None
    given_up_at: datetime | None
    log: list[DeliveryAttempt]


class DeliveryQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    state: DeliveryState | None = Field(default=None, description="Only events in this state.")
    limit: int = Field(default=50, ge=1, description="Most events returned, newest first.")


class DeliveryList(BaseModel):
    webhook_id: int
    count: int
    deliveries: list[Delivery]


# --- the event JSON -------------------------------------------------------------------------


class EventArticle(BaseModel):
    id: int
    title: str
    url: str | None
    source: str | None
    published: datetime | None
    summary: str | None = Field(description="null while the article has no summary yet.")
    importance: float | None
    topics: list[str]


class EventStory(BaseModel):
    id: int
    importance: float = Field(description="Its most important article's importance (0-100).")
    n_articles: int
    n_sources: int
    topics: list[str] = Field(description="The topics of its articles, sorted.")
    sources: list[str] = Field(description="The sources of its articles, sorted.")
    first_published: datetime | None
    last_published: datetime | None
    articles: list[EventArticle] = Field(
        description="Its articles, most important first, at most EVENT_ARTICLES."
    )


class Growth(BaseModel):
    metric: GrowthMetric
    previous: int = Field(description="The metric at the webhook's previous event.")
    current: int


class WebhookEvent(BaseModel):
    """The JSON body of every delivery (``X-Newsdesk-Event-Id`` repeats ``id``)."""

    id: str = Field(description="Unique per event and webhook; the same on every retry.")
    type: EventKind
    created_at: datetime = Field(description="When the story matched or grew.")
    webhook_id: int
    story: EventStory
    growth: Growth | None = Field(description="story.grew only: the growth that fired it.")


EVENT_ARTICLES = 5
