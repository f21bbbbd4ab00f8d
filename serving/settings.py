"""Serving's settings section: the engine, the HTTP API, the cache tiers, the
summarization loop and stories (everything the Serve application reads)."""

from __future__ import annotations

from pydantic import Field, SecretStr

from core.settings import CoreSettings


class ServingSettings(CoreSettings):
    """What the Serve application's deployments and the engine read."""

    # --- model / engine (serving/engine) ----------------------------------------------------
    model_profile: str = Field(
        default="cpu-small",
        description=(
            "Model profile: a name in `configs/models/` (`cpu-small`, `cpu-small-fp32`, "
            "`cpu-small-fast`, `gpu-7b`) or a path to a profile YAML."
        ),
    )
    model_source: str | None = Field(
        default=None,
        description="Overrides the profile's `source` (a local model folder or a hub name).",
    )
    continuous_batching: bool = Field(
        default=True,
        description=(
            "Summarizer replicas decode in one persistent loop that admits articles into free "
            "slots between decode steps and returns each as soon as it ends (CPU profiles; "
            "profiles that decode with model.generate keep whole batches)."
        ),
    )
    engine_threads: int | None = Field(
        default=None,
        ge=1,
        description=(
            "Torch intra-op threads of the engine; on a shared or oversubscribed machine use 1 (2 "
            "threads made a decode step ~30x slower when other processes competed for the 2 cores)."
        ),
    )

    # --- cache tiers --------------------------------------------------------------------------
    redis_url: str | None = Field(
        default=None, description="Redis for the shared cache tier; unset = no Redis."
    )

    # --- serving app (serving/deployments/builder) ------------------------------------------
    api_key: SecretStr | None = Field(
        default=None,
        description="Key for write/admin routes (`X-API-Key`); unset = open.",
    )
    api_max_body_bytes: int = Field(
        default=8 * 1024 * 1024,
        ge=1024,
        description="Largest request body (413 above).",
    )
    api_max_batch_articles: int = Field(
        default=64, ge=1, description="Most articles per batch/stream request."
    )
    api_max_list_limit: int = Field(
        default=200, ge=1, description="Largest `limit` of `GET /v1/articles` and `/v1/feeds`."
    )
    api_rank_half_life_h: float = Field(
        default=24.0,
        gt=0,
        description="Age at which an article's ranking weight halves.",
    )
    public_url: str | None = Field(
        default=None,
        pattern=r"^https?://[^/?#\s]+(/[^?#\s]*)?$",
        description=(
            "The app's public base URL (`https://news.example.org`), for the absolute links "
            "of the digest feeds behind a proxy; unset = the request's own base URL."
        ),
    )
    feeds_max_age_s: int = Field(
        default=300,
        ge=0,
        description="`Cache-Control: max-age` of the digest feeds (`/feeds/digest.*`).",
    )
    cache_max_entries: int = Field(
        default=10_000, ge=1, description="Results in each process-local LRU."
    )
    cache_ttl_s: int = Field(
        default=24 * 3600,
        ge=1,
        description="Lifetime of a cached Result (local and Redis).",
    )
    cache_ingress_entries: int = Field(
        default=2_000,
        ge=0,
        description="Hot Results answered by each Ingress replica itself (0 = off).",
    )
    cache_redis_timeout_s: float = Field(
        default=0.5, gt=0, description="Redis connect/read timeout before falling back."
    )
    cache_redis_retry_s: float = Field(
        default=5.0,
        gt=0,
        description="After a Redis failure: local tier only for this long, then retry.",
    )
    summarizer_timeout_s: float = Field(
        default=900.0,
        gt=0,
        description="Longest wait for one summary before an error reply.",
    )
    summarize_loop_enabled: bool = Field(
        default=True, description="Summarize stored articles in the background."
    )
    summarize_loop_interval_s: float = Field(
        default=10.0, gt=0, description="Loop sleep when nothing is due."
    )
    summarize_loop_batch: int = Field(default=16, ge=1, description="Articles per loop round.")
    summarize_loop_max_age_h: float = Field(
        default=72.0,
        gt=0,
        description="The loop summarizes articles published this recently.",
    )
    summarize_max_attempts: int = Field(
        default=3,
        ge=1,
        description="Failed attempts before the loop gives up on an article.",
    )
    summarize_retry_after_s: float = Field(
        default=600.0,
        ge=0,
        description="Wait before the loop retries a failed article.",
    )

    # --- stories and the digest page (serving/stories, serving/web) ----------------------
    stories_enabled: bool = Field(
        default=True,
        description="Group stored articles into stories beside the summarization loop.",
    )
    story_similarity_threshold: float = Field(
        default=0.80,
        ge=-1,
        le=1,
        description="Cosine (title + lead embeddings) at which an article joins the nearest story.",
    )
    story_window_h: float = Field(
        default=48.0,
        gt=0,
        description="An article joins only stories alive within this many hours of it.",
    )
    story_source_boost: float = Field(
        default=0.10, ge=0, description="Rank bonus per source beyond the first."
    )
    story_source_boost_cap: float = Field(
        default=1.5, ge=1, description="Largest factor the sources bonus may reach."
    )
    story_assign_batch: int = Field(
        default=64, ge=1, description="Articles embedded and grouped per round."
    )
    story_assign_interval_s: float = Field(
        default=5.0,
        gt=0,
        description="Sleep of the story assigner when nothing is pending.",
    )

    # --- webhook alerts (serving/webhooks) -----------------------------------------------
    webhooks_enabled: bool = Field(
        default=True,
        description="Run the webhook dispatcher (events are enqueued whenever webhooks exist).",
    )
    webhook_allow_private_addresses: bool = Field(
        default=False,
        description=(
            "Webhook URLs may name or resolve to private/link-local addresses (separate from "
            "the feeds' setting: any API key holder can subscribe a webhook)."
        ),
    )
    webhook_allow_loopback: bool = Field(
        default=False, description="Webhook URLs may name or resolve to loopback addresses."
    )
    webhook_growth_step: int = Field(
        default=3,
        ge=1,
        description="Default growth threshold: story.grew once a story has this many more "
        "articles (or sources) than at the webhook's last event.",
    )
    webhook_timeout_s: float = Field(
        default=10.0, gt=0, description="Time limit of one delivery POST."
    )
    webhook_max_attempts: int = Field(
        default=8, ge=1, description="Delivery attempts before an event is given up."
    )
    webhook_retry_base_s: float = Field(
        default=10.0,
        gt=0,
        description="Backoff before the 2nd attempt; doubles each attempt (with jitter).",
    )
    webhook_retry_max_s: float = Field(
        default=3600.0, gt=0, description="Longest backoff between two attempts."
    )
    webhook_lease_s: float = Field(
        default=60.0,
        gt=0,
        description="A claimed event is due again after this long if its dispatcher died "
        "(keep it above webhook_timeout_s).",
    )
    webhook_batch: int = Field(
        default=32, ge=1, description="Events a dispatcher claims and sends at once."
    )
    webhook_retention_days: float = Field(
        default=7.0,
        ge=1,
        description="Delivered and given-up events (with their log) are deleted after this "
        "many days; pending ones never are.",
    )
    webhook_poll_interval_s: float = Field(
        default=2.0,
        gt=0,
        description="Dispatcher sleep when nothing is due (a new event wakes it at once).",
    )
