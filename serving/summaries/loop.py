"""The summarization loop: stored articles get summaries without anyone calling the API.

Each round asks PostgreSQL for up to ``summarize_loop_batch`` articles that have no Result
under the Summarizer's current versions (newest first, published within
``summarize_loop_max_age_h``; failed ones only after ``summarize_retry_after_s`` and at most
``summarize_max_attempts`` times, never again after a permanent error such as empty input),
and sends them through the same path as the API (cache -> store -> Summarizer), concurrently,
so ``@serve.batch`` batches them. The outcomes are stored by that path. When nothing is due
it sleeps ``summarize_loop_interval_s``; a new adapter or prompt version makes every recent
article due again under its versions.

One loop works at a time per database: the round runs under a PostgreSQL advisory lock held
on a dedicated connection, so a second app (or a replica overlapping a redeploy) waits.
Nothing stops the loop but ``stop()``: a failing round is logged, counted and retried.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from core.article import Article
from serving.model.result import Outcome, Result, SummarizerUnavailable
from serving.model.versions import Versions
from serving.settings import ServingSettings
from serving.summaries import metrics
from serving.summaries.result_store import ResultStore

log = logging.getLogger(__name__)

LOOP_LOCK_KEY = 7_231_003  # advisory-lock id of the summarization loop (003: serving)
SummarizeFn = Callable[[Article], Awaitable[tuple[Outcome, str]]]
VersionsFn = Callable[[], Awaitable[Versions]]


class SummarizationLoop:
    def __init__(
        self,
        *,
        store: ResultStore,
        summarize: SummarizeFn,
        versions: VersionsFn,
        settings: ServingSettings,
    ) -> None:
        self.store = store
        self._summarize = summarize
        self._versions = versions
        self.settings = settings
        self.outcomes: Counter[str] = Counter()
        self.rounds = 0
        self.last_round_at: float | None = None
        self.last_error: str | None = None
        self._lock_conn: asyncpg.Connection | None = None  # type: ignore[type-arg]
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()

    async def _hold_lock(self) -> bool:
        """Whether this loop holds the advisory lock (taken once, kept on its connection)."""
        if self._lock_conn is not None and not self._lock_conn.is_closed():
            return True
        if self._lock_conn is not None:  # the connection died: the lock went with it
            await self.store.pool.release(self._lock_conn)
            self._lock_conn = None
        conn = await self.store.pool.acquire()
        if await conn.fetchval("SELECT pg_try_advisory_lock($1)", LOOP_LOCK_KEY):
            self._lock_conn = conn
            return True
        await self.store.pool.release(conn)
        return False

    async def run_once(self) -> int:
        """One round: the number of articles sent (0 when none is due or another loop works)."""
        if not await self._hold_lock():
            return 0
        versions = await self._versions()
        s = self.settings
        articles = await self.store.pending_articles(
            versions,
            limit=s.summarize_loop_batch,
            max_age_h=s.summarize_loop_max_age_h,
            max_attempts=s.summarize_max_attempts,
            retry_after_s=s.summarize_retry_after_s,
        )
        if not articles:
            return 0
        kinds = await asyncio.gather(*(self._one(a) for a in articles))
        self.rounds += 1
        self.last_round_at = time.time()
        if "unavailable" in kinds:
            # the Summarizer is down: those articles are due again, but not in a tight loop
            return 0
        return len(articles)

    async def _one(self, article: Article) -> str:
        try:
            outcome, source = await self._summarize(article)
        except SummarizerUnavailable:
            kind = "unavailable"
        except Exception as exc:
            log.warning("loop: article %s failed: %s", article.id, exc)
            kind = "unavailable"
        else:
            if isinstance(outcome, Result):
                kind = "summarized" if source == "model" else "cached"
            else:
                kind = "failed"
        self.outcomes[kind] += 1
        metrics.loop_articles().inc(1, tags={"outcome": kind})
        return kind

    async def run_forever(self) -> None:
        """Rounds until ``stop()``; sleeps when a round found nothing to do."""
        while not self._stop.is_set():
            try:
                sent = await self.run_once()
                self.last_error = None
            except Exception as exc:  # database down, Summarizer not up yet...: try again
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("summarization round failed: %s", self.last_error)
                sent = 0
            if sent == 0:
                self._wake.clear()
                sleep = asyncio.ensure_future(self._wake.wait())
                stop = asyncio.ensure_future(self._stop.wait())
                await asyncio.wait(
                    {sleep, stop},
                    timeout=self.settings.summarize_loop_interval_s,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                sleep.cancel()
                stop.cancel()
        await self.close()

    def wake(self) -> None:
        """Start the next round now (e.g. right after an ingestion run)."""
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()

    async def close(self) -> None:
        if self._lock_conn is not None:
            conn, self._lock_conn = self._lock_conn, None
            try:
                if not conn.is_closed():
                    await conn.execute("SELECT pg_advisory_unlock($1)", LOOP_LOCK_KEY)
            finally:
                await self.store.pool.release(conn)

    def status(self) -> dict[str, Any]:
        return {
            "holds_lock": self._lock_conn is not None,
            "rounds": self.rounds,
            "outcomes": dict(self.outcomes),
            "last_round_at": self.last_round_at,
            "last_error": self.last_error,
        }
