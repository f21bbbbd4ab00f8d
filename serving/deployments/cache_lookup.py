"""CacheLookup: answers from the cache or the store when it can, else asks the Summarizer.

Runs :class:`serving.lookup.LookupService` with a DeploymentHandle to the Summarizer behind
it. One article per call, so that ``@serve.batch`` in the Summarizer batches articles from all
callers together and Serve spreads them over the Summarizer replicas.

A Summarizer replica that dies mid-request (``ActorDiedError`` / unavailable) is retried once:
Serve routes the retry to a live replica, or waits for the restarted one. A second failure
comes back as ``(ArticleError, "unavailable")``; nothing is dropped without a reply.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import ray.exceptions
from ray import serve
from ray.serve.exceptions import BackPressureError, RayServeException
from ray.serve.handle import DeploymentHandle

from ingestion.article import Article
from ingestion.settings import Settings
from serving.cache import SummaryCache
from serving.lookup import LookupService, Outcome, SummarizerUnavailable, VersionTracker
from serving.result import ArticleError
from serving.store import ResultStore
from serving.versions import Versions

log = logging.getLogger(__name__)

RETRYABLE = (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError)
STORE_RETRY_S = 10.0


class CacheLookup:
    def __init__(
        self,
        summarizer: DeploymentHandle,
        settings: Settings,
        version_refresh_s: float = 2.0,
    ) -> None:
        self._summarizer = summarizer
        self._settings = settings
        self.service = LookupService(
            cache=SummaryCache.from_settings(settings),
            summarize=self._call_summarizer,
            versions=VersionTracker(self._fetch_versions, refresh_s=version_refresh_s),
        )
        self._store_lock = asyncio.Lock()
        self._store_failed_at: float | None = None
        self._store_error: str | None = None

    async def _ensure_store(self) -> None:
        """Open the store lazily on this replica's loop; retry a failed open every 10 s.

        Without a database the service still answers (cache + model): results are then not
        stored, and ``/readyz`` says so.
        """
        if self.service.store is not None:
            return
        loop = asyncio.get_running_loop()
        if (
            self._store_failed_at is not None
            and loop.time() - self._store_failed_at < STORE_RETRY_S
        ):
            return
        async with self._store_lock:
            if self.service.store is not None:
                return
            try:
                self.service.store = await ResultStore.open(self._settings)
                self._store_error = None
            except Exception as exc:
                self._store_failed_at = loop.time()
                self._store_error = f"{type(exc).__name__}: {exc}"
                log.warning("result store unavailable: %s", self._store_error)

    async def _fetch_versions(self) -> Versions:
        return await self._summarizer.versions.remote()

    async def _call_summarizer(self, article: Article) -> Outcome:
        for attempt in (1, 2):
            try:
                return await self._summarizer.summarize.remote(article)
            except RETRYABLE as exc:
                if attempt == 2:
                    raise SummarizerUnavailable(f"replica lost twice: {exc}") from None
                log.warning("Summarizer replica lost (%s); retrying article once", exc)
                await asyncio.sleep(0.2)
            except BackPressureError as exc:
                raise SummarizerUnavailable(f"Summarizer queue full: {exc}") from None
            except (ray.exceptions.RayError, RayServeException) as exc:
                raise SummarizerUnavailable(f"{type(exc).__name__}: {exc}") from None
        raise AssertionError("unreachable")

    async def summarize(self, article: Article) -> tuple[Outcome, str]:
        """``(outcome, source)``; source is local, redis, db, model or unavailable."""
        await self._ensure_store()
        try:
            return await self.service.summarize(article)
        except SummarizerUnavailable as exc:
            error = ArticleError(
                article_id=article.id,
                content_hash=article.content_hash,
                code="internal_error",
                message=str(exc),
            )
            return error, "unavailable"

    async def versions(self) -> Versions | None:
        return self.service.versions.current

    async def redis_state(self) -> str:
        cache = self.service.cache
        if cache.redis_state == "down":
            await cache.ping()  # an explicit probe (readyz) may notice the return at once
        return cache.redis_state

    async def stats(self) -> dict[str, Any]:
        await self._ensure_store()
        return {
            **self.service.stats(),
            "replica": _replica_id(),
            "store": "ok" if self.service.store is not None else self._store_error,
        }


def _replica_id() -> str | None:
    try:
        return serve.get_replica_context().replica_id.unique_id
    except Exception:
        return None


CacheLookupDeployment = serve.deployment(name="CacheLookup")(CacheLookup)
