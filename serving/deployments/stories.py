"""StoryAssigner deployment: runs :class:`serving.stories.worker.StoryAssigner` in the
background of one replica (one is enough: assignment is serialised per database by an advisory
lock anyway). It waits for the database through a StoreHandle, as the loop does;
``check_health`` fails if the assigner task ever ends, so Serve restarts the replica instead of
leaving a dead assigner behind. With webhooks enabled it holds the WebhookDispatcher
deployment (:mod:`serving.deployments.webhooks`) and reports its status."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle

from serving.settings import ServingSettings
from serving.stories.worker import StoryAssigner
from serving.summaries.store_handle import StoreHandle

log = logging.getLogger(__name__)

WEBHOOKS_STATUS_TIMEOUT_S = 2.0  # under the loop's wait for this status


class StoryAssignerRunner:
    async def __init__(
        self, settings: ServingSettings, webhooks: DeploymentHandle | None = None
    ) -> None:
        self._settings = settings
        self._webhooks = webhooks  # the WebhookDispatcher deployment, when webhooks are enabled
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
        status = self._assigner.status()
        if self._webhooks is not None:
            try:
                status["webhooks"] = await asyncio.wait_for(
                    self._webhooks.status.remote(), WEBHOOKS_STATUS_TIMEOUT_S
                )
            except Exception as exc:  # a restarting dispatcher must not hide the assigner's
                status["webhooks"] = {"error": f"{type(exc).__name__}: {exc}"}
        return status

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
