"""The one typed settings module (prefix ``NEWSDESK_``).

Every component receives a ``Settings`` object instead of reading ``os.environ`` itself, so
tests build the settings they need (``Settings(database_url=...)``) and never patch the
process environment. Each field is listed in the README's settings table.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_state_dir() -> Path:
    return Path.home() / ".local" / "share" / "newsdesk"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="NEWSDESK_", extra="ignore")

    # --- storage -------------------------------------------------------------------------
    database_url: str | None = Field(
        default=None,
        description="PostgreSQL DSN. Unset: an embedded PostgreSQL under STATE_DIR/pg.",
    )
    redis_url: str | None = Field(
        default=None, description="Redis URL for the shared cache tier. Unset: no Redis."
    )
    state_dir: Path = Field(
        default_factory=_default_state_dir,
        description="Embedded DB data, converted models, checkpoints, sample data.",
    )
    db_pool_min: int = Field(default=1, ge=0)
    db_pool_max: int = Field(default=8, ge=1)

    # --- fetching (ingestion) ------------------------------------------------------------
    fetch_timeout_s: float = Field(default=20.0, gt=0, description="Per-request timeout.")
    fetch_max_bytes: int = Field(default=15 * 1024 * 1024, gt=0, description="Body size cap.")
    fetch_max_redirects: int = Field(default=5, ge=0)
    fetch_concurrency: int = Field(default=32, ge=1, description="Feeds fetched at once.")
    fetch_per_host: int = Field(default=4, ge=1, description="Concurrent fetches per host.")
    user_agent: str = "Newsdesk/0.1 (+https://github.com/newsdesk/newsdesk; RSS reader)"
    allow_private_addresses: bool = Field(
        default=False, description="Allow feeds on private/link-local networks."
    )
    allow_loopback: bool = Field(default=False, description="Allow feeds on 127.0.0.0/8, ::1.")
    feed_interval_s: int = Field(default=900, ge=10, description="Default poll interval.")
    retry_after_cap_s: int = Field(default=6 * 3600, ge=0, description="Cap on Retry-After.")
    backoff_base_s: int = Field(default=60, ge=1, description="First backoff after an error.")
    backoff_max_s: int = Field(default=24 * 3600, ge=1)
    max_consecutive_failures: int = Field(
        default=10, ge=1, description="Failures in a row before a feed is quarantined."
    )
    max_article_chars: int = Field(default=100_000, ge=1000, description="Text cap per article.")
    feeds_file: Path = Field(
        default=Path(__file__).resolve().parent.parent / "configs" / "feeds.yaml",
        description="Feeds loaded at start-up.",
    )
    allow_file_urls: bool = Field(
        default=True, description="Allow file:// feed URLs (offline use; never via a redirect)."
    )
    feed_lease_s: int = Field(
        default=300,
        ge=1,
        description="A claimed feed is not handed to another poller for this long (crash = retry).",
    )
    poll_tick_s: float = Field(
        default=5.0, gt=0, description="Longest sleep of the poller loop between due checks."
    )
    db_retry_timeout_s: float = Field(
        default=300.0,
        gt=0,
        description="How long one poll waits for PostgreSQL to come back before giving up.",
    )
    parse_workers: int = Field(
        default=0,
        ge=0,
        description="Processes parsing feeds beside the poller's event loop (0 = in-process).",
    )
    poller_actor_name: str = Field(
        default="newsdesk-feed-poller", description="Name of the FeedPoller Ray actor."
    )

    # --- ray -----------------------------------------------------------------------------
    ray_address: str | None = Field(
        default=None, description="Ray cluster to join. Unset: start a local one."
    )

    # --- model / engine (serving/engine) ----------------------------------------------------
    model_profile: str = Field(
        default="cpu-small",
        description="Model profile: a name in configs/models/ or a path to a profile YAML.",
    )
    model_source: str | None = Field(
        default=None,
        description="Overrides the profile's source (a local model folder or a hub name).",
    )
    engine_threads: int | None = Field(
        default=None, ge=1, description="torch intra-op threads for the engine. Unset: torch's."
    )

    # --- serving app (serving/app) ----------------------------------------------------------
    api_key: SecretStr | None = Field(
        default=None,
        description="Key required in the X-API-Key header by write and admin routes "
        "(summarize, stats). Unset: those routes are open.",
    )
    api_max_body_bytes: int = Field(
        default=8 * 1024 * 1024, ge=1024, description="Largest request body accepted (413 above)."
    )
    api_max_batch_articles: int = Field(
        default=64, ge=1, description="Most articles in one batch or stream request."
    )
    api_max_list_limit: int = Field(
        default=200, ge=1, description="Largest `limit` of GET /v1/articles."
    )
    api_rank_half_life_h: float = Field(
        default=24.0,
        gt=0,
        description="GET /v1/articles ranks by importance halved every this many hours of age.",
    )
    serve_host: str = Field(default="127.0.0.1", description="Serve HTTP host (`newsdesk up`).")
    serve_port: int = Field(default=8000, ge=1, le=65535, description="Serve HTTP port.")
    cache_max_entries: int = Field(
        default=10_000, ge=1, description="Results kept in each process-local LRU cache."
    )
    cache_ttl_s: int = Field(
        default=24 * 3600, ge=1, description="Lifetime of a cached Result (local and Redis)."
    )
    cache_ingress_entries: int = Field(
        default=2_000,
        ge=0,
        description="Hot Results kept in each Ingress replica: their hits skip the hop to "
        "CacheLookup (0: off).",
    )
    cache_redis_timeout_s: float = Field(
        default=0.5, gt=0, description="Redis connect/read timeout before falling back."
    )
    cache_redis_retry_s: float = Field(
        default=5.0,
        gt=0,
        description="After a Redis failure, answer from the local tier this long, then retry.",
    )
    summarizer_timeout_s: float = Field(
        default=900.0,
        gt=0,
        description="Longest wait for one article's summary before an error reply.",
    )
    summarize_loop_enabled: bool = Field(
        default=True, description="Summarize stored articles in the background."
    )
    summarize_loop_interval_s: float = Field(
        default=10.0, gt=0, description="Sleep of the summarization loop when nothing is due."
    )
    summarize_loop_batch: int = Field(
        default=16, ge=1, description="Articles the loop sends through the Summarizer at once."
    )
    summarize_loop_max_age_h: float = Field(
        default=72.0,
        gt=0,
        description="The loop summarizes articles published within this many hours.",
    )
    summarize_max_attempts: int = Field(
        default=3, ge=1, description="Failed attempts before the loop gives up on an article."
    )
    summarize_retry_after_s: float = Field(
        default=600.0, ge=0, description="Wait before the loop retries a failed article."
    )

    # --- product: stories, digest page, sample feeds (serving/stories, serving/web) -------
    stories_enabled: bool = Field(
        default=True,
        description="Group stored articles into stories beside the summarization loop.",
    )
    story_similarity_threshold: float = Field(
        default=0.80,
        ge=-1,
        le=1,
        description="Cosine similarity (title + lead embeddings) at which an article joins "
        "the nearest story.",
    )
    story_window_h: float = Field(
        default=48.0, gt=0, description="An article joins only stories alive within this many h."
    )
    story_source_boost: float = Field(
        default=0.10, ge=0, description="Rank bonus per source beyond the first (0.10 = +10%)."
    )
    story_source_boost_cap: float = Field(
        default=1.5, ge=1, description="Largest factor the sources bonus may reach."
    )
    story_assign_batch: int = Field(
        default=64, ge=1, description="Articles embedded and assigned to stories per round."
    )
    story_assign_interval_s: float = Field(
        default=5.0, gt=0, description="Sleep of the story assigner when nothing is pending."
    )
    sample_feeds: bool = Field(
        default=True,
        description="`newsdesk up` also subscribes to sample feeds built from real ABC "
        "articles (file:// URLs under STATE_DIR/sample-feeds), so an offline stack has news.",
    )

    # --- training (train/) ------------------------------------------------------------------
    training_dir: Path | None = Field(
        default=None,
        description="Training pairs, Ray Train runs, checkpoints and adapters. "
        "Unset: STATE_DIR/training.",
    )
    teacher_url: str | None = Field(
        default=None,
        description="Default teacher endpoint for generate_training_data (an OpenAI-compatible "
        "API base such as http://vllm:8000/v1, or the Serve app's base URL).",
    )
    teacher_model: str | None = Field(
        default=None, description="Model name sent to an OpenAI-compatible teacher."
    )
    teacher_api_key: str | None = Field(
        default=None, description="Bearer token for the teacher endpoint (unset: none sent)."
    )

    def resolved_state_dir(self) -> Path:
        path = self.state_dir.expanduser()
        path.mkdir(parents=True, exist_ok=True)
        return path
