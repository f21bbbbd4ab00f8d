"""StoryAssigner deployment: runs :class:`serving.stories.worker.StoryAssigner` in the
background of one replica (one is enough: assignment is serialised per database by an advisory
lock anyway). It waits for the database through a StoreHandle, as the loop does;
``check_health`` fails if the assigner task ever ends, so Serve restarts the replica instead of
leaving a dead assigner behind."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ray import serve

from serving.settings import ServingSettings
from serving.store_handle import StoreHandle
from serving.stories.worker import StoryAssigner

log = logging.getLogger(__name__)


class StoryAssignerRunner:
    async def __init__(self, settings: ServingSettings) -> None:
        self._settings = settings
        self._assigner: StoryAssigner | None = None
        self._store = StoreHandle(settings)
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        store = await self._store.wait()  # the database may not be up yet
        self._assigner = StoryAssigner(store.pool, self._settings)
        try:
            await self._assigner.run_forever()
        finally:
            await store.close()

    async def status(self) -> dict[str, Any]:
        """The assigner's counters; before the database is reachable, why it waits."""
        if self._assigner is None:
            return {"running": False, "waiting_for_database": self._store.error}
        return self._assigner.status()

    async def check_health(self) -> None:
        if self._task.done():
            raise RuntimeError(f"story assigner ended: {self._task!r}")

    async def __del__(self) -> None:
        if self._assigner is not None:
            self._assigner.stop()
        self._task.cancel()


StoryAssignerDeployment = serve.deployment(name="StoryAssigner", num_replicas=1)(
    StoryAssignerRunner
)
