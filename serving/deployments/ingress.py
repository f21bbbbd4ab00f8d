"""Ingress: the HTTP entry. Mounts the Starlette app of :mod:`serving.http.app` (Serve's late-bound
ASGI ingress, ``__serve_build_asgi_app__``) over a backend made of DeploymentHandles:
summaries through CacheLookup, article reads from PostgreSQL, readiness and statistics from
every deployment."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import asyncpg
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.types import ASGIApp

from core.article import Article
from serving.deployments.cache_lookup import summarize_via
from serving.http.app import build_api
from serving.http.config import ApiConfig
from serving.http.errors import BackendUnavailable
from serving.http.schemas import Check
from serving.model.result import Outcome
from serving.model.versions import summarizer_versions
from serving.settings import ServingSettings
from serving.stories.ranking import list_stories, story_list_args
from serving.stories.schemas import StoryList, StoryQuery
from serving.summaries.lookup import NearCache, VersionTracker
from serving.summaries.result_store import ArticleQuery, ResultStore, StoredArticle
from serving.summaries.store_handle import StoreHandle

log = logging.getLogger(__name__)

ADMIN_TIMEOUT_S = 5.0
DB_ERRORS = (OSError, TimeoutError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError)


class DatabaseUnavailable(BackendUnavailable):
    pass


class ServeBackend:
    """:class:`serving.http.backend.ApiBackend` over the application's DeploymentHandles."""

    def __init__(
        self,
        cache_lookup: DeploymentHandle,
        summarizer: DeploymentHandle,
        settings: ServingSettings,
        loop: DeploymentHandle | None = None,
        services: dict[str, DeploymentHandle] | None = None,
    ) -> None:
        self._lookup = cache_lookup
        self._summarizer = summarizer
        self._loop = loop
        self._services = dict(services or {})  # other deployments of the app (status only)
        self._settings = settings
        self._store = StoreHandle(settings)
        self._near = NearCache(
            VersionTracker(summarizer_versions(summarizer)),
            max_entries=settings.cache_ingress_entries,
            ttl_s=settings.cache_ttl_s,
        )

    async def startup(self) -> None:
        await self._store.get()

    async def shutdown(self) -> None:
        await self._store.close()

    async def _require_store(self) -> ResultStore:
        store = await self._store.get()
        if store is None:
            raise DatabaseUnavailable(self._store.error or "database unavailable")
        return store

    async def summarize(self, article: Article) -> tuple[Outcome, str]:
        """A hot Result from this replica, else CacheLookup's; raises SummarizerUnavailable."""
        hot = await self._near.get(article)
        if hot is not None:
            return hot, "local"
        outcome, source = await summarize_via(self._lookup, article)
        self._near.put(article, outcome)
        return outcome, source

    async def database(self) -> asyncpg.Pool:
        return (await self._require_store()).pool

    async def list_articles(self, query: ArticleQuery) -> list[StoredArticle]:
        store = await self._require_store()
        try:
            return await store.list_articles(query)
        except DB_ERRORS as exc:
            raise DatabaseUnavailable(f"database error: {exc}") from None

    async def get_article(self, article_id: int) -> StoredArticle | None:
        store = await self._require_store()
        try:
            return await store.get_article(article_id)
        except DB_ERRORS as exc:
            raise DatabaseUnavailable(f"database error: {exc}") from None

    async def list_stories(self, query: StoryQuery) -> StoryList:
        store = await self._require_store()
        try:
            return await list_stories(store.pool, query, **story_list_args(self._settings))
        except DB_ERRORS as exc:
            raise DatabaseUnavailable(f"database error: {exc}") from None

    async def readiness(self) -> tuple[dict[str, Check], dict[str, str]]:
        model_check, db_check, redis = await asyncio.gather(
            self._model_check(), self._db_check(), self._redis_state()
        )
        return {"model": model_check, "database": db_check}, {"redis": redis}

    async def _model_check(self) -> Check:
        try:
            info = await asyncio.wait_for(self._summarizer.info.remote(), ADMIN_TIMEOUT_S)
        except Exception as exc:
            return Check(ok=False, detail=f"Summarizer not answering: {type(exc).__name__}")
        detail = f"{info['model_id']} adapter={info['adapter_id']} prompt={info['prompt_version']}"
        if info.get("adapter_error"):
            detail += f"; {info['adapter_error']}"
        return Check(ok=True, detail=detail)

    async def _db_check(self) -> Check:
        store = await self._store.get()
        if store is None:
            return Check(ok=False, detail=self._store.error or "database unavailable")
        if not await store.ping():
            return Check(ok=False, detail="database not answering")
        return Check(ok=True, detail="reachable")

    async def _redis_state(self) -> str:
        try:
            return await asyncio.wait_for(self._lookup.redis_state.remote(), ADMIN_TIMEOUT_S)
        except Exception as exc:
            return f"unknown ({type(exc).__name__})"

    async def stats(self) -> dict[str, Any]:
        async def ask(call: Any) -> Any:
            try:
                return await asyncio.wait_for(call, ADMIN_TIMEOUT_S)
            except Exception as exc:
                return {"error": f"{type(exc).__name__}: {exc}"}

        async def rates() -> Any:
            store = await self._store.get()
            if store is None:
                return {"error": self._store.error}
            return await ask(store.rates())

        lookup, summarizer, throughput, loop, *services = await asyncio.gather(
            ask(self._lookup.stats.remote()),
            ask(self._summarizer.info.remote()),
            rates(),
            ask(self._loop.status.remote()) if self._loop is not None else _none(),
            *(ask(handle.status.remote()) for handle in self._services.values()),
        )
        return {
            "ingress_cache": self._near.stats(),
            "lookup": lookup,
            "summarizer": summarizer,
            "throughput": throughput,
            "summarization_loop": loop,
            **dict(zip(self._services, services, strict=True)),
            "note": "ingress, lookup and summarizer figures are from the replicas that answered",
        }


async def _none() -> None:
    return None


@serve.ingress()
class Ingress:
    def __init__(
        self,
        cache_lookup: DeploymentHandle,
        summarizer: DeploymentHandle,
        settings: ServingSettings,
        loop: DeploymentHandle | None = None,
        services: dict[str, DeploymentHandle] | None = None,
    ) -> None:
        self._backend = ServeBackend(cache_lookup, summarizer, settings, loop, services)
        self._config = ApiConfig.from_settings(settings, behind_serve_proxy=True)

    def __serve_build_asgi_app__(self) -> ASGIApp:
        return build_api(self._backend, self._config)


IngressDeployment = serve.deployment(name="Ingress")(Ingress)
