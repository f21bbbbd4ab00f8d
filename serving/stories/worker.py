"""The background story assigner: rounds of (unassigned articles -> embeddings -> one
assignment transaction, which also enqueues the webhook events of the stories it changed)
until stopped. The :mod:`serving.deployments.stories` deployment runs
one per application."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from typing import Any

import asyncpg

from serving.settings import ServingSettings
from serving.stories.clustering import AssignReport
from serving.stories.embedder import StoryEmbedder
from serving.stories.store import assign_articles, pending_articles
from serving.webhooks.matcher import enqueue_for_stories

log = logging.getLogger(__name__)


class StoryAssigner:
    """Assigns stored articles to stories in the background. Nothing stops it but
    :meth:`stop`: a failing round is logged, counted and retried."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        settings: ServingSettings,
        embedder: StoryEmbedder | None = None,
    ) -> None:
        self.pool = pool
        self.settings = settings
        self.embedder = embedder or StoryEmbedder()
        self.assigned: Counter[str] = Counter()
        self.rounds = 0
        self.last_error: str | None = None
        self.embed_s = 0.0
        self.events = 0
        self._stop = asyncio.Event()

    async def assign_pending(self) -> AssignReport:
        """One round: up to ``story_assign_batch`` unassigned articles, embedded and assigned."""
        s = self.settings
        articles = await pending_articles(
            self.pool, max_age_h=s.summarize_loop_max_age_h, limit=s.story_assign_batch
        )
        if not articles:
            return AssignReport()
        started = time.perf_counter()
        vectors = await asyncio.to_thread(self.embedder.embed, articles)
        self.embed_s += time.perf_counter() - started
        async with self.pool.acquire() as conn, conn.transaction():
            report = await assign_articles(  # its own transaction nests: a savepoint
                conn,
                articles,
                vectors,
                threshold=s.story_similarity_threshold,
                window_h=s.story_window_h,
            )
            # webhook events of the stories that grew, committed with the assignment
            self.events += await enqueue_for_stories(conn, report.stories)
        self.rounds += 1
        self.assigned.update(report.by)
        return report

    async def run_forever(self) -> None:
        while not self._stop.is_set():
            try:
                report = await self.assign_pending()
                self.last_error = None
            except Exception as exc:  # database down, a bad row...: log, wait, try again
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("story assignment failed: %s", self.last_error)
                report = AssignReport()
            if report.assigned < self.settings.story_assign_batch:
                try:
                    await asyncio.wait_for(
                        self._stop.wait(), timeout=self.settings.story_assign_interval_s
                    )
                except TimeoutError:
                    pass

    def stop(self) -> None:
        self._stop.set()

    def status(self) -> dict[str, Any]:
        return {
            "rounds": self.rounds,
            "assigned": dict(self.assigned),
            "embed_s": round(self.embed_s, 2),
            "webhook_events": self.events,
            "last_error": self.last_error,
        }
