"""A PostgreSQL session advisory lock held on a connection of its own: "one worker per database".

Used where exactly one process may do a job per database however many processes are started
to host it (two replicas of a Serve deployment, a replica overlapping a redeploy, a second
Ray cluster on the same database): the feed poller (``ingestion.deployment``).

Why this and not a named detached Ray actor: a Ray actor name is unique per Ray cluster (and
namespace), not per database; two clusters, or a cluster and a ``newsdesk ingest`` process,
would both poll. A lease row with an expiry needs a clock and a renewal loop and is held for
its whole lease after the holder died. A session advisory lock is per database, taken without
a table, and released by the server itself the moment the holder's session ends: a process
that is killed, or whose node dies, loses the lock with its connection.

How fast the server notices a *node* that vanished (no FIN, no RST) is set on the lock's own
connection: TCP keepalives and ``tcp_user_timeout`` (``PgLockTimings``), so a dead holder's
lock is free after about ``server_gone_s``. The holder, in turn, checks its connection every
``heartbeat_s`` with a query bounded by ``heartbeat_timeout_s``; the first failed check means
it may have lost the lock and it must stop working at once (``held`` turns False). The holder
gives up before the server frees the lock (``heartbeat_s + heartbeat_timeout_s <
server_gone_s``), so two workers never run at once, even across a network partition.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import asyncpg

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PgLockTimings:
    heartbeat_s: float = 5.0  # how often the holder checks its connection
    heartbeat_timeout_s: float = 5.0  # a check slower than this counts as a lost connection
    server_gone_s: float = 30.0  # the server drops a silent holder's session after about this

    def __post_init__(self) -> None:
        if self.heartbeat_s + self.heartbeat_timeout_s >= self.server_gone_s:
            raise ValueError("the holder must notice a lost connection before the server frees it")


class PgSessionLock:
    """``pg_try_advisory_lock(key)`` on a dedicated connection; ``acquire`` until it is held.

    ``held`` is True only while the connection that holds the lock answered its last check.
    """

    def __init__(self, dsn: str, key: int, timings: PgLockTimings | None = None) -> None:
        self.dsn = dsn
        self.key = key
        self.timings = timings or PgLockTimings()
        self._conn: asyncpg.Connection | None = None
        self.held = False
        self.acquired = 0  # times this process took the lock (a second one: it lost it once)

    async def _connect(self) -> asyncpg.Connection:
        t = self.timings
        idle = max(1, int(t.server_gone_s / 3))
        # the server's side of this session: probe a silent client, drop it after server_gone_s
        return await asyncpg.connect(
            self.dsn,
            timeout=10,
            server_settings={
                "application_name": f"newsdesk-lock-{self.key}",
                "tcp_keepalives_idle": str(idle),
                "tcp_keepalives_interval": str(idle),
                "tcp_keepalives_count": "2",
                "tcp_user_timeout": str(int(t.server_gone_s * 1000)),
            },
        )

    async def try_acquire(self) -> bool:
        """Take the lock if it is free; True when this process holds it now."""
        if self.held and await self.check():
            return True
        await self._drop()
        conn = await self._connect()
        try:
            got = await conn.fetchval("SELECT pg_try_advisory_lock($1)", self.key)
        except BaseException:
            await conn.close()
            raise
        if not got:
            await conn.close()
            return False
        self._conn, self.held = conn, True
        self.acquired += 1
        return True

    async def acquire(self, retry_s: float, stop: asyncio.Event | None = None) -> bool:
        """Wait until the lock is held (False only when ``stop`` is set first). Connection
        errors are waited out: the database may be down, or restarting."""
        while stop is None or not stop.is_set():
            try:
                if await self.try_acquire():
                    return True
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("lock %s: %s: %s", self.key, type(exc).__name__, exc)
            if stop is None:
                await asyncio.sleep(retry_s)
            else:
                try:
                    await asyncio.wait_for(stop.wait(), retry_s)
                except TimeoutError:
                    pass
        return False

    async def check(self) -> bool:
        """Whether the lock's connection still answers (so the lock is still ours)."""
        if self._conn is None or self._conn.is_closed():
            self.held = False
            return False
        try:
            await asyncio.wait_for(
                self._conn.fetchval("SELECT 1"), self.timings.heartbeat_timeout_s
            )
        except Exception as exc:  # a dead or hung connection: the lock may be gone
            log.warning("lock %s lost: %s: %s", self.key, type(exc).__name__, exc)
            self.held = False
            await self._drop()
            return False
        return True

    async def watch(self) -> None:
        """Return when the lock is lost (checks every ``heartbeat_s``)."""
        while True:
            if not await self.check():
                return
            await asyncio.sleep(self.timings.heartbeat_s)

    async def release(self) -> None:
        if self._conn is not None and not self._conn.is_closed() and self.held:
            try:
                await asyncio.wait_for(
                    self._conn.execute("SELECT pg_advisory_unlock($1)", self.key), 5
                )
            except Exception:  # closing the session below releases it anyway
                pass
        self.held = False
        await self._drop()

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            conn.terminate()  # never waits on a dead peer
