"""One process's ResultStore, opened lazily and retried: the Ingress, CacheLookup and the
summarization loop each hold one :class:`StoreHandle`.

Serve replicas start before the database may be up, and a replica must keep answering what it
can without it (cache + model; ``/readyz`` says the database is down). So the pool is opened on
first use, on the replica's own event loop (asyncpg pools belong to the loop that made them);
a failed open is remembered for ``retry_s`` so requests in that window do not each wait for a
connect timeout, and the failure is kept for ``/readyz`` and ``/v1/stats``.
"""

from __future__ import annotations

import asyncio
import logging

from serving.settings import ServingSettings
from serving.summaries.result_store import ResultStore

log = logging.getLogger(__name__)

STORE_RETRY_S = 10.0


class StoreHandle:
    def __init__(self, settings: ServingSettings, *, retry_s: float = STORE_RETRY_S) -> None:
        self._settings = settings
        self.retry_s = retry_s
        self._store: ResultStore | None = None
        self._failed_at: float | None = None
        self._lock: asyncio.Lock | None = None  # made on the loop that first uses it
        self.error: str | None = None  # the last failed open, until one succeeds

    @property
    def store(self) -> ResultStore | None:
        """The open store, or None (not opened yet, or the database unreachable)."""
        return self._store

    async def get(self) -> ResultStore | None:
        """The store, opening it if due; None while the database is unreachable."""
        if self._store is not None:
            return self._store
        loop = asyncio.get_running_loop()
        if self._failed_at is not None and loop.time() - self._failed_at < self.retry_s:
            return None
        self._lock = self._lock or asyncio.Lock()
        async with self._lock:
            if self._store is None:
                try:
                    self._store = await ResultStore.open(self._settings)
                    self.error = None
                except Exception as exc:
                    self._failed_at = loop.time()
                    self.error = f"{type(exc).__name__}: {exc}"
                    log.warning("database unavailable: %s", self.error)
        return self._store

    async def wait(self) -> ResultStore:
        """The store, waiting for the database as long as it takes (tries every retry_s)."""
        while True:
            store = await self.get()
            if store is not None:
                return store
            await asyncio.sleep(self.retry_s)

    async def close(self) -> None:
        if self._store is not None:
            store, self._store = self._store, None
            await store.close()
