"""The one typed settings module (prefix ``NEWSDESK_``).

Every component receives a ``Settings`` object instead of reading ``os.environ`` itself, so
tests build the settings they need (``Settings(database_url=...)``) and never patch the
process environment. Each field is listed in the README's settings table.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
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

    # --- ray -----------------------------------------------------------------------------
    ray_address: str | None = Field(
        default=None, description="Ray cluster to join. Unset: start a local one."
    )

    # --- model / engine (serving/engine) ----------------------------------------------------

    # --- serving app (serving/app) ----------------------------------------------------------

    # --- training (train/) ------------------------------------------------------------------

    def resolved_state_dir(self) -> Path:
        path = self.state_dir.expanduser()
        path.mkdir(parents=True, exist_ok=True)
        return path
