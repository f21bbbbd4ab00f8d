"""The API in one process, without Ray: the same routes, cache, store and batching code.

:class:`LocalBackend` implements :class:`serving.http.backend.ApiBackend` with a
:class:`~serving.summaries.lookup.LookupService` over an in-process
:class:`~serving.deployments.summarizer.Summarizer` (the engine, batched by the same
``@serve.batch`` code, which is plain asyncio). Used by tests of the routes and as the
benchmark's bare-Starlette baseline. The engine is loaded on the first summary, so routes that
never reach the model (validation, article reads) cost no model load.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import asyncpg

from core.article import Article
from serving.deployments.summarizer import Summarizer
from serving.http.app import build_api
from serving.http.config import ApiConfig
from serving.http.schemas import Check
from serving.model.result import Outcome
from serving.model.versions import Versions
from serving.settings import ServingSettings
from serving.stories.ranking import list_stories, story_list_args
from serving.stories.schemas import StoryList, StoryQuery
from serving.summaries.cache import SummaryCache
from serving.summaries.lookup import LookupService, VersionTracker
from serving.summaries.result_store import ArticleQuery, ResultStore, StoredArticle


@contextlib.contextmanager
def replica_context(max_ongoing_requests: int = 32) -> Iterator[None]:
    """Run ``@serve.batch`` code outside a replica (Ray 2.60 needs a replica context there).

    Ray 2.60's batch queue reads ``serve.get_replica_context()`` when it is created or resized
    (to warn when ``max_ongoing_requests`` caps batches) and raises outside a replica. This sets
    the context a replica of the Summarizer would have, and restores the previous one on exit
    (a driver process must not look like a replica to ``serve.run``). Private Ray API, pinned
    with ``ray==2.60.0``.
    """
    from ray.serve import context
    from ray.serve._private.common import DeploymentID, ReplicaID
    from ray.serve._private.config import DeploymentConfig
    from ray.serve.schema import ReplicaRank

    previous = context._get_internal_replica_context()
    if previous is not None:  # inside a real replica already
        yield
        return
    context._set_internal_replica_context(
        replica_id=ReplicaID("in-process", DeploymentID(name="Summarizer", app_name="local")),
        servable_object=None,  # type: ignore[arg-type]
        _deployment_config=DeploymentConfig(max_ongoing_requests=max_ongoing_requests),
        rank=ReplicaRank(rank=0, node_rank=0, local_rank=0),
        world_size=1,
    )
    try:
        yield
    finally:
        context._INTERNAL_REPLICA_CONTEXT = None


class LocalBackend:
    def __init__(
        self,
        settings: ServingSettings,
        summarizer: Summarizer | Callable[[], Summarizer],
        *,
        store: ResultStore | None = None,
        use_store: bool = True,
        cache: SummaryCache | None = None,
        versions: Versions | None = None,
    ) -> None:
        self.settings = settings
        self._summarizer = summarizer if isinstance(summarizer, Summarizer) else None
        self._factory = None if isinstance(summarizer, Summarizer) else summarizer
        self._load_lock = asyncio.Lock()
        self._use_store = use_store
        self._owns_store = store is None
        self._fixed_versions = versions  # known versions: no model load just to learn them
        self._context = contextlib.ExitStack()
        self.lookup = LookupService(
            cache=cache or SummaryCache.from_settings(settings),
            summarize=self._summarize_model,
            versions=VersionTracker(self._versions),
            store=store,
        )

    async def summarizer(self) -> Summarizer:
        if self._summarizer is None:
            async with self._load_lock:
                if self._summarizer is None:
                    assert self._factory is not None
                    self._summarizer = await asyncio.to_thread(self._factory)
        return self._summarizer

    async def _versions(self) -> Versions:
        if self._fixed_versions is not None:
            return self._fixed_versions
        return (await self.summarizer()).versions()

    async def _summarize_model(self, article: Article) -> Outcome:
        return await (await self.summarizer()).summarize(article)

    async def startup(self) -> None:
        self._context.enter_context(replica_context())
        if self._use_store and self.lookup.store is None:
            self.lookup.store = await ResultStore.open(self.settings)

    async def shutdown(self) -> None:
        if self._owns_store and self.lookup.store is not None:
            await self.lookup.store.close()
            self.lookup.store = None
        await self.lookup.cache.close()
        if self._factory is not None and self._summarizer is not None:
            self._summarizer.close()  # made here: its engine thread ends with the app
        self._context.close()

    async def summarize(self, article: Article) -> tuple[Outcome, str]:
        return await self.lookup.summarize(article)

    def _store(self) -> ResultStore:
        if self.lookup.store is None:
            raise RuntimeError("LocalBackend runs without a store")
        return self.lookup.store

    async def database(self) -> asyncpg.Pool:
        return self._store().pool

    async def list_articles(self, query: ArticleQuery) -> list[StoredArticle]:
        return await self._store().list_articles(query)

    async def get_article(self, article_id: int) -> StoredArticle | None:
        return await self._store().get_article(article_id)

    async def list_stories(self, query: StoryQuery) -> StoryList:
        return await list_stories(self._store().pool, query, **story_list_args(self.settings))

    async def readiness(self) -> tuple[dict[str, Check], dict[str, str]]:
        model = (
            Check(ok=True, detail=self._summarizer.versions().model_id)
            if self._summarizer is not None
            else Check(ok=False, detail="model not loaded yet")
        )
        store = self.lookup.store
        db = Check(ok=bool(store and await store.ping()), detail="in-process store")
        return {"model": model, "database": db}, {"redis": self.lookup.cache.redis_state}

    async def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {"lookup": self.lookup.stats()}
        if self._summarizer is not None:
            out["summarizer"] = self._summarizer.info()
        if self.lookup.store is not None:
            out["throughput"] = await self.lookup.store.rates()
        return out


def local_app(backend: LocalBackend, settings: ServingSettings | None = None):  # type: ignore[no-untyped-def]
    """The Starlette app of the API over a LocalBackend."""
    return build_api(backend, ApiConfig.from_settings(settings or backend.settings))
