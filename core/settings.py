"""Typed settings (prefix ``NEWSDESK_``): the base every layer's section derives from.

Each layer owns the fields it reads, in its own module: :class:`CoreSettings` here (storage
and the Ray cluster to join), ``ingestion.settings.IngestionSettings``,
``serving.settings.ServingSettings``, ``train.settings.TrainSettings`` and, at the top,
``cluster.settings.Settings``, which composes them all for the CLI and the local stack.

Sections extend ``CoreSettings`` (every layer needs the database) and the composite inherits
every section, so the object the assembly builds *is* each section: a component names only
its section in its signature and reads only that section's fields (a type checker holds it
to that), while one environment variable still configures one field wherever it is read. The
reference in ``docs/settings.md`` is generated from these classes
(``python -m cluster.settings_reference``); a test fails when it drifts.
"""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

S = TypeVar("S", bound="CoreSettings")


def _default_state_dir() -> Path:
    return Path.home() / ".local" / "share" / "newsdesk"


class CoreSettings(BaseSettings):
    """Storage and the Ray cluster: what every layer shares."""

    model_config = SettingsConfigDict(env_prefix="NEWSDESK_", extra="ignore")

    database_url: str | None = Field(
        default=None,
        description="PostgreSQL DSN; unset = embedded PostgreSQL 18 under `STATE_DIR/pg`.",
    )
    state_dir: Path = Field(
        default_factory=_default_state_dir,
        description="Embedded DB data, converted models, checkpoints.",
    )
    db_pool_min: int = Field(
        default=1, ge=0, description="Fewest connections in each asyncpg pool."
    )
    db_pool_max: int = Field(default=8, ge=1, description="Most connections in each asyncpg pool.")
    ray_address: str | None = Field(
        default=None, description="Ray cluster to join; unset = a local one."
    )

    def resolved_state_dir(self) -> Path:
        path = self.state_dir.expanduser()
        path.mkdir(parents=True, exist_ok=True)
        return path

    def section(self, cls: type[S]) -> S:
        """This object narrowed to section ``cls``: what crosses a process boundary.

        A Ray actor or Serve deployment receives only its own section (smaller, and it
        cannot come to depend on another layer's fields).
        """
        if not isinstance(self, cls):
            raise TypeError(f"{type(self).__name__} does not hold section {cls.__name__}")
        if type(self) is cls:
            return self
        return cls.model_construct(
            **{name: getattr(self, name) for name in cls.model_fields},
            _fields_set={n for n in self.model_fields_set if n in cls.model_fields},
        )
