"""The composite settings of a whole Newsdesk: every layer's section, plus the local stack's.

The CLI and ``newsdesk up`` build one :class:`Settings`; it *is* each section (it inherits
them), and each component is handed the section it names (``settings.section(...)`` where it
crosses a process boundary).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from ingestion.settings import IngestionSettings
from train.settings import TrainSettings

CONFIGS_DIR = Path(__file__).resolve().parent.parent / "configs"


class Settings(IngestionSettings, TrainSettings):
    """Every section, and what only the local stack (`newsdesk up`) reads."""

    serve_host: str = Field(default="127.0.0.1", description="Serve HTTP host of `newsdesk up`.")
    serve_port: int = Field(
        default=8000, ge=1, le=65535, description="Serve HTTP port of `newsdesk up`."
    )
    feeds_file: Path = Field(
        default=CONFIGS_DIR / "feeds.yaml",
        description="Feeds `newsdesk up` subscribes to (existing ones untouched).",
    )
    api_url: str | None = Field(
        default=None,
        description=(
            "A Newsdesk API (`http://host:8000`) that `newsdesk feeds ...` administers instead "
            "of the database (`--api`); its key: `NEWSDESK_API_KEY`."
        ),
    )
    sample_feeds: bool = Field(
        default=True,
        description=(
            "`newsdesk up` also subscribes to sample feeds of real ABC text (`file://`, "
            "`STATE_DIR/sample-feeds`)."
        ),
    )
