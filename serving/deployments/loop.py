"""SummarizationLoop deployment: runs :class:`serving.summarize_loop.SummarizationLoop` in the
background of one replica, sending articles through CacheLookup (so the cache and the store
see them like API requests). ``check_health`` fails if the loop task ever ends, so Serve
restarts the replica instead of leaving a dead loop behind."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle

from ingestion.article import Article
from ingestion.settings import Settings
from serving.deployments.cache_lookup import summarize_via
from serving.result import Outcome
from serving.store_handle import StoreHandle
from serving.stories import StoryAssigner
from serving.summarize_loop import SummarizationLoop
from serving.versions import Versions

log = logging.getLogger(__name__)


class LoopRunner:
    async def __init__(
        self, cache_lookup: DeploymentHandle, summarizer: DeploymentHandle, settings: Settings
    ) -> None:
        self._cache_lookup = cache_lookup
        self._summarizer = summarizer
        self._settings = settings
        self._loop: SummarizationLoop | None = None
        self._store = StoreHandle(settings)
        self._stories: StoryAssigner | None = None  # story grouping, beside the loop
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _summarize(self, article: Article) -> tuple[Outcome, str]:
        return await summarize_via(self._cache_lookup, article)

    async def _versions(self) -> Versions:
        return await self._summarizer.versions.remote()

    async def _run(self) -> None:
        store = await self._store.wait()  # the database may not be up yet
        self._loop = SummarizationLoop(
            store=store, summarize=self._summarize, versions=self._versions, settings=self._settings
        )
        stories = None
        if self._settings.stories_enabled:
            self._stories = StoryAssigner(store.pool, self._settings)
            stories = asyncio.get_running_loop().create_task(self._stories.run_forever())
        try:
            await self._loop.run_forever()
        finally:
            if stories is not None and self._stories is not None:
                self._stories.stop()
                await asyncio.gather(stories, return_exceptions=True)
            await store.close()

    async def status(self) -> dict[str, Any]:
        if self._loop is None:
            return {"running": False, "waiting_for_database": self._store.error}
        stories = self._stories.status() if self._stories is not None else None
        return {"running": not self._task.done(), **self._loop.status(), "stories": stories}

    async def wake(self) -> None:
        if self._loop is not None:
            self._loop.wake()

    async def check_health(self) -> None:
        if self._task.done():
            raise RuntimeError(f"summarization loop ended: {self._task!r}")

    async def __del__(self) -> None:
        if self._loop is not None:
            self._loop.stop()
        if self._stories is not None:
            self._stories.stop()
        self._task.cancel()


SummarizationLoopDeployment = serve.deployment(name="SummarizationLoop", num_replicas=1)(LoopRunner)
