"""The cache-lookup path as plain async code: cache -> stored Results -> the Summarizer.

:class:`LookupService` is what the CacheLookup deployment runs, and what an in-process app
(tests, the bare baseline of the benchmark) runs around an engine directly:

0. the engine's input check: an article without usable text is refused at once;
1. the current versions (model, adapter, prompt) from the Summarizer, refreshed in the
   background every ``refresh_s`` and corrected by every Result that comes back;
2. the cache (local LRU+TTL, then Redis), keyed by content hash + versions;
3. PostgreSQL: a Result stored under the same content and versions (a cold restart does not
   summarize again what the store already holds);
4. the Summarizer; its Result goes into the cache, and every outcome into the store.
   Concurrent requests for the same text under the same versions share one model call.

A store failure never fails a request: the Result is returned and the failure counted.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Literal

import asyncpg
from cachetools import TTLCache

from core.article import Article
from serving.model.prompt import InputError, check_article
from serving.model.result import ArticleError, Outcome, Result, SummarizerUnavailable
from serving.model.versions import Versions, cache_key
from serving.summaries.cache import SummaryCache
from serving.summaries.result_store import ResultStore

log = logging.getLogger(__name__)

Source = Literal["local", "redis", "db", "model", "coalesced", "rejected"]
SummarizeFn = Callable[[Article], Awaitable[Outcome]]


class VersionTracker:
    """The Summarizer's current versions, as one caller knows them.

    The versions are the engine's (``SummarizeEngine.versions``); the Summarizer reads them
    at load and on an adapter swap, and every outcome it returns carries them: a Result with
    other versions (an adapter swapped by ``user_config``) updates the tracker at once
    (:meth:`observe`). The tracker asks the Summarizer only for its first value and, when
    nothing told it for ``refresh_s``, again in the background (never on the hot path): that
    is how a replica answering only cache hits learns of a swap. Serve cannot push to every
    replica of another deployment, and a waiting "tell me when it changes" call would hold one
    of the Summarizer's ``max_ongoing_requests`` slots (smaller batches), count as load for
    its autoscaler and hold up its graceful shutdown.
    """

    def __init__(
        self,
        fetch: Callable[[], Awaitable[Versions]],
        *,
        refresh_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fetch = fetch
        self._refresh_s = refresh_s
        self._clock = clock
        self._current: Versions | None = None
        self._fetched_at = 0.0
        self._inflight: asyncio.Task[Versions] | None = None

    @property
    def current(self) -> Versions | None:
        return self._current

    async def get(self) -> Versions:
        if self._current is None:
            return await self._refresh()
        if self._clock() - self._fetched_at > self._refresh_s and self._inflight is None:
            self._inflight = asyncio.ensure_future(self._refresh())
            self._inflight.add_done_callback(_log_refresh_failure)
        return self._current

    def observe(self, versions: Versions) -> None:
        self._current = versions
        self._fetched_at = self._clock()

    async def _refresh(self) -> Versions:
        try:
            versions = await self._fetch()
        finally:
            self._inflight = None
        self.observe(versions)
        return versions


def _log_refresh_failure(task: asyncio.Task[Versions]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("refreshing the Summarizer's versions failed: %s", task.exception())


@dataclass
class LookupCounters:
    requests: int = 0
    hit_local: int = 0
    hit_redis: int = 0
    hit_db: int = 0
    model: int = 0
    coalesced: int = 0  # answered by another caller's model call for the same text
    rejected: int = 0  # unusable input (empty, binary), refused before the model
    errors: int = 0  # ArticleErrors from the model
    unavailable: int = 0  # Summarizer unreachable
    store_errors: int = 0


class LookupService:
    """Cache, then stored Results, then the Summarizer; see the module docstring."""

    def __init__(
        self,
        *,
        cache: SummaryCache,
        summarize: SummarizeFn,
        versions: VersionTracker,
        store: ResultStore | None = None,
    ) -> None:
        self.cache = cache
        self.store = store
        self.versions = versions
        self._summarize = summarize
        # (article id, cache key) pairs already saved: repeated hits skip the database
        self._saved: TTLCache[tuple[int, str], bool] = TTLCache(maxsize=50_000, ttl=3600)
        self.counters = LookupCounters()
        # cache key -> the model call in flight for it (identical concurrent texts share one)
        self._inflight: dict[str, asyncio.Future[Outcome]] = {}

    async def summarize(self, article: Article) -> tuple[Outcome, Source]:
        """One article's outcome and where it came from. Raises SummarizerUnavailable."""
        self.counters.requests += 1
        versions = await self.versions.get()
        key = cache_key(article.content_hash, versions)
        try:
            # the engine's own input check (serving.model.prompt), before any cache or batch slot
            check_article(article)
        except InputError as exc:
            self.counters.rejected += 1
            rejected = ArticleError(
                article_id=article.id,
                content_hash=article.content_hash,
                code=exc.code,  # type: ignore[arg-type]
                message=str(exc),
                **versions.as_dict(),  # type: ignore[arg-type]
            )
            await self._save(article, rejected, versions, key)
            return rejected, "rejected"
        cached, tier = await self.cache.lookup(key)
        source: Source = "redis" if tier == "redis" else "local"
        if cached is None and self.store is not None:
            cached = await self._stored(article, versions)
            source = "db"
            if cached is not None:
                await self.cache.put(key, cached)
        if cached is not None:
            setattr(self.counters, f"hit_{source}", getattr(self.counters, f"hit_{source}") + 1)
            result = _for_article(cached, article)
            if article.id is not None and (article.id, key) not in self._saved:
                await self._save(article, result, versions, key)
            return result, source

        inflight = self._inflight.get(key)
        if inflight is not None:
            # the same text is being summarized for another caller: share its outcome
            try:
                shared = await asyncio.shield(inflight)
            except asyncio.CancelledError:
                if not inflight.cancelled():
                    raise  # this caller was cancelled
            else:
                self.counters.coalesced += 1
                outcome = _for_article(shared, article)
                await self._save(article, outcome, versions, key)
                return outcome, "coalesced"
        return await self._from_model(article, versions, key)

    async def _from_model(
        self, article: Article, versions: Versions, key: str
    ) -> tuple[Outcome, Source]:
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        future.add_done_callback(_retrieve)
        self._inflight[key] = future
        try:
            outcome = await self._summarize(article)
        except SummarizerUnavailable as exc:
            self.counters.unavailable += 1
            future.set_exception(exc)
            raise
        except asyncio.CancelledError:
            future.cancel()  # waiting callers do the work themselves
            raise
        except BaseException as exc:
            future.set_exception(exc)
            raise
        else:
            future.set_result(outcome)
        finally:
            if self._inflight.get(key) is future:
                del self._inflight[key]
        self.counters.model += 1
        if isinstance(outcome, Result):
            actual = Versions.of(outcome) or versions
            if actual != versions:
                self.versions.observe(actual)
            await self.cache.put(cache_key(article.content_hash, actual), outcome)
        else:
            self.counters.errors += 1
        outcome = _for_article(outcome, article)
        await self._save(article, outcome, versions, key)
        return outcome, "model"

    async def _stored(self, article: Article, versions: Versions) -> Result | None:
        assert self.store is not None
        try:
            return await self.store.find_result(article.content_hash, versions)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            self.counters.store_errors += 1
            log.warning("stored-Result lookup failed: %s", exc)
            return None

    async def _save(self, article: Article, outcome: Outcome, versions: Versions, key: str) -> None:
        if self.store is None:
            return
        try:
            await self.store.save(article, outcome, versions)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            self.counters.store_errors += 1
            log.warning("storing the outcome of article %s failed: %s", article.id, exc)
            return
        if article.id is not None and isinstance(outcome, Result):
            self._saved[(article.id, key)] = True

    def stats(self) -> dict[str, object]:
        versions = self.versions.current
        return {
            **asdict(self.counters),
            "cache": self.cache.stats(),
            "versions": versions.as_dict() if versions else None,
        }


def _retrieve(future: asyncio.Future[Outcome]) -> None:
    """Mark a failed future's exception as seen (the caller that owns it re-raises it)."""
    if not future.cancelled():
        future.exception()


def _for_article(outcome: Outcome, article: Article) -> Outcome:
    """The outcome as this article's: a cached Result may come from another copy of the text."""
    if outcome.article_id == article.id:
        return outcome
    return outcome.model_copy(update={"article_id": article.id})


class NearCache:
    """Hot Results inside the Ingress process: a repeat request is answered there, without the
    hop to CacheLookup (on 2 cores each Serve handle call costs ~6 ms and two thirds of the
    throughput). Filled from the Results CacheLookup returns; keyed like the cache, with the
    Summarizer's versions from the same kind of tracker, so an adapter swap turns it over.
    Requests for a stored article (with an id) always go to CacheLookup, which attaches the
    Result to the article in the store."""

    def __init__(self, versions: VersionTracker, *, max_entries: int, ttl_s: float) -> None:
        self.versions = versions
        self._cache = SummaryCache(max_entries=max_entries, ttl_s=ttl_s) if max_entries else None
        self.hits = 0
        self.misses = 0

    async def get(self, article: Article) -> Result | None:
        if self._cache is None or article.id is not None:
            return None
        try:
            versions = await self.versions.get()
        except Exception:  # the Summarizer is not reachable: CacheLookup will say so
            return None
        found = self._cache.get_local(cache_key(article.content_hash, versions))
        if found is None:
            self.misses += 1
            return None
        self.hits += 1
        result = _for_article(found, article)
        assert isinstance(result, Result)
        return result

    def put(self, article: Article, outcome: Outcome) -> None:
        if self._cache is None or not isinstance(outcome, Result):
            return
        versions = Versions.of(outcome)
        if versions is None:
            return
        if versions != self.versions.current:
            self.versions.observe(versions)
        self._cache.put_local(cache_key(article.content_hash, versions), outcome)

    def stats(self) -> dict[str, object]:
        lookups = self.hits + self.misses
        return {
            "hits": self.hits,
            "misses": self.misses,
            "hit_rate": self.hits / lookups if lookups else None,
            "entries": self._cache.stats()["local_entries"] if self._cache else 0,
        }
