"""``FeedPoller``: the poller as a named, optionally detached, async Ray actor.

A thin shell around ``ingestion.poll_loop.Poller``: it starts the loop on creation (again after
Ray restarts it), keeps trying when the first connection gives up, and exposes the
``Poller``'s operations as actor methods with plain-dict results.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import asdict
from typing import Any

import ray

from ingestion.logs import configure_process_logging, event
from ingestion.poll_loop import Poller
from ingestion.settings import IngestionSettings

log = logging.getLogger(__name__)

RAY_NAMESPACE = "newsdesk"


@ray.remote(num_cpus=0, max_restarts=-1)
class FeedPoller:
    """The poller as a named, optionally detached, async Ray actor.

        poller = FeedPoller.options(name=settings.poller_actor_name, namespace=RAY_NAMESPACE,
                                    lifetime="detached").remote(settings)
        ray.get(poller.poll_now.remote())

    It starts polling on creation (and again after Ray restarts it: ``max_restarts=-1``);
    ``num_cpus=0`` because it mostly waits on the network and PostgreSQL.
    """

    def __init__(self, settings: IngestionSettings, autostart: bool = True) -> None:
        configure_process_logging()
        self._poller = Poller(settings)
        self._task: asyncio.Task[None] | None = None
        if autostart:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            try:
                await self._poller.start()
                await self._poller.run_forever()
                return
            except Exception as exc:  # connect gave up: say so and try again
                self._poller.last_error = f"{type(exc).__name__}: {exc}"
                event(log, logging.ERROR, "poller_start_failed", error=self._poller.last_error)
                await asyncio.sleep(self._poller.settings.poll_tick_s)

    async def start(self) -> bool:
        """Start the loop if it is not running; True when it was started now."""
        if self._task is not None and not self._task.done():
            return False
        self._poller.allow_restart()
        self._task = asyncio.get_running_loop().create_task(self._run())
        return True

    async def ready(self) -> dict[str, Any]:
        """Wait until connected to PostgreSQL; the status."""
        await self._poller.start()
        return await self._poller.status()

    async def add_feed(
        self, url: str, interval_s: int | None = None, title: str | None = None
    ) -> dict[str, Any]:
        feed, created = await self._poller.add_feed(url, interval_s=interval_s, title=title)
        return {"feed": asdict(feed), "created": created}

    async def remove_feed(self, url_or_id: str | int) -> dict[str, Any] | None:
        feed = await self._poller.remove_feed(url_or_id)
        return asdict(feed) if feed else None

    async def poll_now(self) -> dict[str, Any]:
        """Poll every due feed once, now; the summary (outcomes and counts)."""
        summary = await self._poller.poll_once()
        return summary.as_dict(reports=True)

    async def status(self) -> dict[str, Any]:
        return await self._poller.status()

    async def stop(self) -> None:
        """Stop polling (in-flight feeds finish) and release the pool; the actor stays."""
        self._poller.request_stop()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, timeout=30)
            except TimeoutError:
                self._task.cancel()
        await self._poller.close()
        self._poller = Poller(self._poller.settings)
