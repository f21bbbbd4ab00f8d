"""WebhookDispatcher deployment: runs :class:`serving.webhooks.dispatcher.WebhookDispatcher`
in the background of each replica (several are safe: they claim events with ``SKIP LOCKED``).
It waits for the database through a StoreHandle, as the loop does; ``check_health`` fails if
the dispatcher task ever ends, so Serve restarts the replica. The StoryAssigner deployment
holds its handle (events come from stories) and reports its status under ``webhooks``."""

from __future__ import annotations

import asyncio
from typing import Any

from ray import serve

from serving.settings import ServingSettings
from serving.summaries.store_handle import StoreHandle
from serving.webhooks import store as webhook_store
from serving.webhooks.dispatcher import WebhookDispatcher


class WebhookDispatcherRunner:
    async def __init__(self, settings: ServingSettings) -> None:
        self._settings = settings
        self._dispatcher: WebhookDispatcher | None = None
        self._store = StoreHandle(settings)
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        store = await self._store.wait()  # the database may not be up yet
        self._dispatcher = WebhookDispatcher(store.pool, self._settings)
        try:
            await self._dispatcher.run_forever()
        finally:
            await self._dispatcher.aclose()
            await store.close()

    async def status(self) -> dict[str, Any]:
        """The dispatcher's counters and the outbox by state."""
        if self._dispatcher is None:
            return {"running": False, "waiting_for_database": self._store.error}
        return {
            **self._dispatcher.status(),
            "events": await webhook_store.backlog(self._dispatcher.pool),
        }

    async def check_health(self) -> None:
        if self._task.done():
            raise RuntimeError(f"webhook dispatcher ended: {self._task!r}")

    async def __del__(self) -> None:
        if self._dispatcher is not None:
            self._dispatcher.stop()
        self._task.cancel()


WebhookDispatcherDeployment = serve.deployment(name="WebhookDispatcher", num_replicas=1)(
    WebhookDispatcherRunner
)
