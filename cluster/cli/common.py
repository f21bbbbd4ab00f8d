"""Helpers shared by the CLI command modules."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

from rich.console import Console

from ingestion.settings import Settings

T = TypeVar("T")
console = Console()
err_console = Console(stderr=True)


def settings() -> Settings:
    """The CLI is the one place that reads the process environment into Settings."""
    return Settings()


def run(coro: Coroutine[Any, Any, T]) -> T:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    return asyncio.run(coro)
