"""CacheLookup: answers from the cache or the store when it can, else asks the Summarizer.

Runs :class:`serving.summaries.lookup.LookupService` with a DeploymentHandle to the Summarizer
behind it. One article per call, so that ``@serve.batch`` in the Summarizer batches articles from
all callers together and Serve spreads them over the Summarizer replicas.

**The one retry hop.** A Summarizer replica that dies mid-request (``ActorDiedError`` /
unavailable) is retried once, here: Serve routes the retry to a live replica, or waits for the
restarted one. This is the hop to retry because model replicas are the ones that die (out of
memory, killed mid-batch), the retry resends one article without repeating the cache and store
lookups, and callers waiting for the same text share the retried call (the lookup coalesces
them). Summarizing is idempotent (the store keeps the first Result), so a retry is safe. The
Ingress and the loop do not retry their call to this light deployment: a second retry layer
would multiply the attempts (and the wait) for a request the Summarizer cannot serve; a lost
CacheLookup replica is answered 503 with Retry-After.

**Unavailable.** A second failure is a :class:`~serving.model.result.SummarizerUnavailable`, which
:meth:`CacheLookup.summarize` *returns* (a raised exception would cross the handle as a
RayTaskError with a traceback for its text, and be logged as a failed request); callers get
it back raised, as is, from :func:`summarize_via`. Nothing is dropped without a reply.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import ray.exceptions
from ray import serve
from ray.serve.exceptions import BackPressureError, RayServeException
from ray.serve.handle import DeploymentHandle

from core.article import Article
from serving.model.result import Outcome, SummarizerUnavailable
from serving.model.versions import Versions, summarizer_versions
from serving.settings import ServingSettings
from serving.summaries.cache import SummaryCache
from serving.summaries.lookup import LookupService, Source, VersionTracker
from serving.summaries.store_handle import StoreHandle

log = logging.getLogger(__name__)

RETRYABLE = (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError)
Reply = tuple[Outcome, Source] | SummarizerUnavailable


class CacheLookup:
    def __init__(
        self,
        summarizer: DeploymentHandle,
        settings: ServingSettings,
        version_refresh_s: float = 2.0,
    ) -> None:
        self._summarizer = summarizer
        self.service = LookupService(
            cache=SummaryCache.from_settings(settings),
            summarize=self._call_summarizer,
            versions=VersionTracker(summarizer_versions(summarizer), refresh_s=version_refresh_s),
        )
        # Without a database the service still answers (cache + model): results are then not
        # stored, and /readyz says so.
        self._store = StoreHandle(settings)

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

    async def summarize(self, article: Article) -> Reply:
        """``(outcome, source)``, or the SummarizerUnavailable (returned: see the docstring)."""
        self.service.store = await self._store.get()
        try:
            return await self.service.summarize(article)
        except SummarizerUnavailable as exc:
            return exc

    async def versions(self) -> Versions | None:
        return self.service.versions.current

    async def redis_state(self) -> str:
        cache = self.service.cache
        if cache.redis_state == "down":
            await cache.ping()  # an explicit probe (readyz) may notice the return at once
        return cache.redis_state

    async def stats(self) -> dict[str, Any]:
        self.service.store = await self._store.get()
        return {
            **self.service.stats(),
            "replica": _replica_id(),
            "store": "ok" if self.service.store is not None else self._store.error,
        }


async def summarize_via(cache_lookup: DeploymentHandle, article: Article) -> tuple[Outcome, str]:
    """One article through CacheLookup, for its callers (the Ingress, the loop).

    Raises :class:`~serving.model.result.SummarizerUnavailable`: the one CacheLookup returned, or
    one for a CacheLookup that could not be reached (not retried: see the module docstring).
    """
    try:
        reply = await cache_lookup.summarize.remote(article)
    except (ray.exceptions.RayError, RayServeException) as exc:
        raise SummarizerUnavailable(f"{type(exc).__name__}: {exc}") from None
    if isinstance(reply, SummarizerUnavailable):
        raise reply
    return reply


def _replica_id() -> str | None:
    try:
        return serve.get_replica_context().replica_id.unique_id
    except Exception:
        return None


CacheLookupDeployment = serve.deployment(name="CacheLookup")(CacheLookup)
