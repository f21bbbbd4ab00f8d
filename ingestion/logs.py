"""Ingestion's logging: structured events (``event key=value ...`` text that grep and log
shippers both read, with the same fields in ``record.fields`` and ``record.feed_id`` for a JSON
formatter) and the set-up of a process that has none (the poller's Ray worker)."""

from __future__ import annotations

import logging
from typing import Any


def _fmt(value: Any) -> str:
    text = str(value)
    if not text or any(c in text for c in ' ="\n'):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ") + '"'
    return text


def event(logger: logging.Logger, level: int, name: str, **fields: Any) -> None:
    """Log ``name`` with ``fields`` (None values left out)."""
    if not logger.isEnabledFor(level):
        return
    shown = {k: v for k, v in fields.items() if v is not None}
    text = " ".join([name, *(f"{k}={_fmt(v)}" for k, v in shown.items())])
    logger.log(level, text, extra={"event": name, "fields": shown, "feed_id": shown.get("feed_id")})


def configure_process_logging() -> None:
    """Logging for a process that has none set up (the ``FeedPoller`` actor's Ray worker):
    INFO lines with a timestamp, without httpx's one line per request (noise)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
