"""Waiting out PostgreSQL: every database step of polling goes through ``with_db_retry``.

PostgreSQL going away (a restart, a network blip) is not a feed's failure: the step waits
and retries for up to ``db_retry_timeout_s``, dropping the pool's dead connections, and only
then gives up with ``DatabaseUnavailable``. The caller keeps what it fetched in memory, so
after the restart the poll carries on and nothing is lost or stored twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg

from ingestion.logs import event

log = logging.getLogger(__name__)
T = TypeVar("T")


class DatabaseUnavailable(Exception):
    pass


def is_db_unavailable(exc: BaseException) -> bool:
    """Errors that mean "PostgreSQL is away (restarting, unreachable)": wait and retry."""
    if isinstance(
        exc,
        OSError
        | TimeoutError
        | asyncpg.PostgresConnectionError
        | asyncpg.CannotConnectNowError
        | asyncpg.AdminShutdownError
        | asyncpg.CrashShutdownError
        | asyncpg.TooManyConnectionsError
        | asyncpg.TransactionRollbackError,  # deadlock / serialization: retry the unit
    ):
        return True
    return isinstance(exc, asyncpg.InterfaceError) and "closed" in str(exc)


async def with_db_retry(
    op: Callable[[], Awaitable[T]],
    *,
    timeout_s: float,
    what: str,
    pool: asyncpg.Pool | None = None,
    feed_id: int | None = None,
) -> T:
    """Run ``op``; while PostgreSQL is away, wait and retry it for up to ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    delay = 0.1
    attempt = 0
    while True:
        try:
            return await op()
        except Exception as exc:
            if not is_db_unavailable(exc):
                raise
            attempt += 1
            if pool is not None:
                # Connections from before a restart are dead: drop them all at once.
                await pool.expire_connections()
            if time.monotonic() + delay > deadline:
                raise DatabaseUnavailable(f"{what}: PostgreSQL unavailable: {exc}") from exc
            level = logging.WARNING if attempt in (1, 10) or attempt % 50 == 0 else logging.DEBUG
            event(log, level, "db_wait", what=what, feed_id=feed_id, attempt=attempt, error=exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
