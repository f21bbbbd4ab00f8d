"""The FeedPoller as a real Ray actor (session-scoped local Ray): named, polling on its own,
add/remove/poll_now/status/stop, and bad feeds or bad calls never kill it."""

from __future__ import annotations

import asyncio
import time
import uuid

import asyncpg
import pytest
import ray

from cluster.settings import Settings
from ingestion.actor import RAY_NAMESPACE, FeedPoller
from tests.support.feedserver import items, rss_document


async def _articles(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval("SELECT count(*) FROM articles")
    finally:
        await conn.close()


async def test_feed_poller_actor_end_to_end(ray_session, settings: Settings, feed_server):
    name = f"test-poller-{uuid.uuid4().hex[:8]}"
    s = settings.model_copy(update={"poller_actor_name": name, "poll_tick_s": 60})
    feed_server.route("/a.xml", body=rss_document(items(4)), etag='"a1"')
    feed_server.route("/bad.xml", body=b"<html><body>not a feed</body></html>")
    feed_server.route("/down.xml", status=503, headers={"Retry-After": "600"})

    actor = FeedPoller.options(name=name, namespace=RAY_NAMESPACE).remote(s, autostart=False)
    try:
        added = await actor.add_feed.remote(feed_server.url("/a.xml"), 600)
        assert added["created"] and added["feed"]["interval_s"] == 600
        await actor.add_feed.remote(feed_server.url("/bad.xml"))
        await actor.add_feed.remote(feed_server.url("/down.xml"))

        summary = await actor.poll_now.remote()
        assert summary["feeds"] == {"ok": 1, "parse_error": 1, "rate_limited": 1}
        assert summary["articles_new"] == 4
        reasons = {r["url"].rsplit("/", 1)[1]: r["reason"] for r in summary["reports"]}
        assert "HTML page" in reasons["bad.xml"] and "Retry-After 600" in reasons["down.xml"]

        # A bad call is an error for the caller, not the end of the actor.
        with pytest.raises(ray.exceptions.RayTaskError, match="scheme"):
            await actor.add_feed.remote("gopher://example.com/feed")

        same = ray.get_actor(name, namespace=RAY_NAMESPACE)  # found by name
        status = await same.status.remote()
        assert status["database"] == "ok" and status["feeds"] == {"active": 3}
        assert status["metrics"]["exported_to_ray"] is True
        assert status["metrics"]["fetches"] == {"ok": 1, "parse_error": 1, "rate_limited": 1}
        assert status["totals"]["articles_new"] == 4 and not status["running"]

        removed = await actor.remove_feed.remote(feed_server.url("/bad.xml"))
        assert removed["url"].endswith("/bad.xml")
        assert await actor.remove_feed.remote("999999") is None

        # The loop: started, it polls a newly added feed at once (add_feed wakes it).
        assert await actor.start.remote() is True
        feed_server.route("/b.xml", body=rss_document(items(3, prefix="b")))
        await actor.add_feed.remote(feed_server.url("/b.xml"))
        deadline = time.monotonic() + 20
        while await _articles(s.database_url or "") < 7:
            assert time.monotonic() < deadline, await actor.status.remote()
            await asyncio.sleep(0.1)
        status = await actor.status.remote()
        assert status["running"] and status["last_error"] is None

        await actor.stop.remote()
        assert (await actor.status.remote())["running"] is False
    finally:
        ray.kill(actor)
