"""Ingestion's settings section: fetching feeds, polling them, storing their articles."""

from __future__ import annotations

from pydantic import Field

from core.settings import CoreSettings


class IngestionSettings(CoreSettings):
    """What the fetcher, the poller and the feed store read."""

    # --- fetching (ingestion) ------------------------------------------------------------
    fetch_timeout_s: float = Field(
        default=20.0,
        gt=0,
        description="Total time for one feed fetch, redirects and body included.",
    )
    fetch_max_bytes: int = Field(
        default=15 * 1024 * 1024,
        gt=0,
        description="Body cap (after decompression); a larger feed is aborted: `too_large`.",
    )
    fetch_max_redirects: int = Field(
        default=5,
        ge=0,
        description="Redirects followed per fetch; loops are detected and named.",
    )
    fetch_concurrency: int = Field(
        default=32, ge=1, description="Feeds fetched at once by one poller."
    )
    fetch_per_host: int = Field(default=4, ge=1, description="Fetches at once per host.")
    user_agent: str = Field(
        default="Newsdesk/0.1 (+https://github.com/newsdesk/newsdesk; RSS reader)",
        description="User-Agent of every fetch.",
    )
    allow_private_addresses: bool = Field(
        default=False,
        description="Allow feeds on private, link-local and other non-global addresses.",
    )
    allow_loopback: bool = Field(
        default=False, description="Allow feeds on 127.0.0.0/8, ::1, localhost."
    )
    feed_interval_s: int = Field(
        default=900, ge=10, description="Poll interval of a feed added without one."
    )
    retry_after_cap_s: int = Field(
        default=6 * 3600, ge=0, description="Longest `Retry-After` honoured."
    )
    backoff_base_s: int = Field(
        default=60,
        ge=1,
        description="Wait after a first failure, doubling per failure up to BACKOFF_MAX_S.",
    )
    backoff_max_s: int = Field(
        default=24 * 3600,
        ge=1,
        description="Longest backoff; quarantined feeds are probed this often.",
    )
    max_consecutive_failures: int = Field(
        default=10, ge=1, description="Failures in a row before a feed is quarantined."
    )
    max_article_chars: int = Field(
        default=100_000,
        ge=1000,
        description="Article text cap (cut on a word boundary).",
    )
    allow_file_urls: bool = Field(
        default=True,
        description="Allow `file://` feeds (offline use); a redirect can never lead to one.",
    )
    feed_lease_s: int = Field(
        default=300,
        ge=1,
        description=(
            "A claimed feed is not handed to another poller for this long (a crashed poller's "
            "feeds come back after it)."
        ),
    )
    poll_tick_s: float = Field(
        default=5.0,
        gt=0,
        description="Longest sleep of the poll loop between checks for due feeds.",
    )
    db_retry_timeout_s: float = Field(
        default=300.0,
        gt=0,
        description="How long one poll step waits for PostgreSQL to come back.",
    )
    parse_workers: int = Field(
        default=0,
        ge=0,
        description="Worker processes parsing feeds (0 = in the poller's process).",
    )
    poller_actor_name: str = Field(
        default="newsdesk-feed-poller",
        description="Name of the `FeedPoller` actor (namespace `newsdesk`).",
    )
