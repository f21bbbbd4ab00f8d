"""``newsdesk feeds ...`` and ``newsdesk ingest``: filled in by the ingestion work."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    pass
