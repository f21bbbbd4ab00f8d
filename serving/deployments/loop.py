"""SummarizationLoop deployment: runs :class:`serving.summaries.loop.SummarizationLoop` in the
background of one replica, sending articles through CacheLookup (so the cache and the store
see them like API requests). ``check_health`` fails if the loop task ever ends, so Serve
restarts the replica instead of leaving a dead loop behind. Its status also carries the
StoryAssigner deployment's (``stories``), where ``/v1/stats`` and ``newsdesk status`` read it:
stories are grouped beside the loop, over the same recent articles."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle

from core.article import Article
from serving.deployments.cache_lookup import summarize_via
from serving.model.result import Outcome
from serving.model.versions import Versions
from serving.settings import ServingSettings
from serving.summaries.loop import SummarizationLoop
from serving.summaries.store_handle import StoreHandle

log = logging.getLogger(__name__)

STORIES_STATUS_TIMEOUT_S = 3.0  # under the Ingress's wait for this status (ADMIN_TIMEOUT_S)


class LoopRunner:
    async def __init__(
        self,
        cache_lookup: DeploymentHandle,
        summarizer: DeploymentHandle,
        settings: ServingSettings,
        stories: DeploymentHandle | None = None,
    ) -> None:
        self._cache_lookup = cache_lookup
        self._summarizer = summarizer
        self._settings = settings
        self._stories = stories  # the StoryAssigner deployment, when stories are enabled
        self._loop: SummarizationLoop | None = None
        self._store = StoreHandle(settings)
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
        try:
            await self._loop.run_forever()
        finally:
            await store.close()

    async def status(self) -> dict[str, Any]:
        if self._loop is None:
            return {"running": False, "waiting_for_database": self._store.error}
        return {
            "running": not self._task.done(),
            **self._loop.status(),
            "stories": await self._stories_status(),
        }

    async def _stories_status(self) -> dict[str, Any] | None:
        if self._stories is None:
            return None
        try:
            return await asyncio.wait_for(self._stories.status.remote(), STORIES_STATUS_TIMEOUT_S)
        except Exception as exc:  # a restarting assigner must not hide the loop's status
            return {"error": f"{type(exc).__name__}: {exc}"}

    async def wake(self) -> None:
        if self._loop is not None:
            self._loop.wake()

    async def check_health(self) -> None:
        if self._task.done():
            raise RuntimeError(f"summarization loop ended: {self._task!r}")

    async def __del__(self) -> None:
        if self._loop is not None:
            self._loop.stop()
        self._task.cancel()


SummarizationLoopDeployment = serve.deployment(name="SummarizationLoop", num_replicas=1)(LoopRunner)
