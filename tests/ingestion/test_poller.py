"""poll_once and the Poller end to end: a real HTTP server, real PostgreSQL, bad input of every
kind, conditional GET across polls, backoff/quarantine/disable, restart-resume and two
pollers at once, without duplicates."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import pytest

from cluster.settings import Settings
from ingestion import store
from ingestion.poll_loop import Poller, poll_once
from tests.support.feedserver import FeedServer, Item, items, rss_document


def with_(settings: Settings, **kw: object) -> Settings:
    return settings.model_copy(update=kw)


async def add(pool: asyncpg.Pool, server: FeedServer, *paths: str) -> dict[str, store.Feed]:
    out = {}
    for path in paths:
        feed, _ = await store.add_feed(pool, server.url(path), interval_s=900)
        out[path] = feed
    return out


async def feed_row(pool: asyncpg.Pool, feed_id: int) -> store.Feed:
    feed = await store.get_feed(pool, feed_id)
    assert feed is not None
    return feed


async def article_count(pool: asyncpg.Pool, feed_id: int | None = None) -> int:
    if feed_id is None:
        return await pool.fetchval("SELECT count(*) FROM articles")
    return await pool.fetchval("SELECT count(*) FROM articles WHERE feed_id = $1", feed_id)


async def eventually(check, within_s: float = 15.0) -> None:  # type: ignore[no-untyped-def]
    """Wait until ``await check()`` is true (polling: the thing waited for is in PostgreSQL)."""
    deadline = time.monotonic() + within_s
    while not await check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def _at_least(count, n: int) -> bool:  # type: ignore[no-untyped-def]
    return await count >= n


async def _true(value: bool) -> bool:
    return value


async def test_bad_input_never_stops_a_poll_and_leaves_reasons(settings, pool, feed_server):
    """Every kind of bad feed in one poll: each gets its reason, the good entries are kept."""
    s = with_(settings, fetch_timeout_s=1.0, fetch_max_bytes=200_000, fetch_max_redirects=3)
    good = rss_document(items(4, prefix="good"))
    bozo = rss_document(items(3, prefix="bozo")).replace(b"<item>", b"<item><x&>", 1)
    dates = rss_document(
        [
            Item(guid="d1", pub_date="yesterday-ish"),
            Item(guid="d2", pub_date="Fri, 01 Jan 2100 00:00:00 GMT"),
        ]
    )
    nolink = rss_document(
        [
            Item(guid=None, link=None, title="Has text", description="Only text here."),
            Item(guid=None, link=None, title="Nothing at all", description=None),
        ]
    )
    routes = {
        "/good.xml": {"body": good},
        "/bozo.xml": {"body": bozo},
        "/dates.xml": {"body": dates},
        "/nolink.xml": {"body": nolink},
        "/malformed.xml": {"body": b"<?xml version='1.0'?><rss><channel><title>x</ti"},
        "/html": {
            "body": b"<!doctype html><html><body>Hi</body></html>",
            "content_type": "text/html",
        },
        "/empty.xml": {"body": b""},
        "/empty-feed.xml": {"body": rss_document([])},
        "/huge.xml": {"body": rss_document(items(3000)), "send_length": False},
        "/slow.xml": {"body": good, "delay_s": 2.5},
        "/loop-a": {"status": 302, "location": "/loop-b"},
        "/loop-b": {"status": 302, "location": "/loop-a"},
        "/404": {"status": 404},
        "/410": {"status": 410},
        "/500": {"status": 500},
    }
    for path, kw in routes.items():
        feed_server.route(path, **kw)
    feeds = await add(pool, feed_server, *[p for p in routes if p != "/loop-b"])

    summary = await poll_once(pool, s)

    expected = {
        "/good.xml": ("ok", None),
        "/bozo.xml": ("ok", "malformed, 3 good entries kept"),
        "/dates.xml": ("ok", None),
        "/nolink.xml": ("ok", None),
        "/empty-feed.xml": ("ok", None),
        "/malformed.xml": ("parse_error", "malformed feed"),
        "/html": ("parse_error", "HTML page"),
        "/empty.xml": ("parse_error", "empty document"),
        "/huge.xml": ("too_large", "cap"),
        "/slow.xml": ("timeout", "no complete answer within 1 s"),
        "/loop-a": ("redirect_error", "loop"),
        "/404": ("http_error", "HTTP 404"),
        "/410": ("gone", "410"),
        "/500": ("http_error", "HTTP 500"),
    }
    by_id = {r.feed_id: r for r in summary.reports}
    for path, (outcome, words) in expected.items():
        feed = await feed_row(pool, feeds[path].id)
        assert by_id[feed.id].outcome == outcome, (path, by_id[feed.id])
        assert feed.last_outcome == outcome
        if words:
            assert words in (feed.last_error or ""), (path, feed.last_error)
        elif outcome == "ok":
            assert feed.last_error is None and feed.consecutive_failures == 0
        if outcome not in ("ok",):
            assert feed.consecutive_failures == 1
    assert (await feed_row(pool, feeds["/410"].id)).status == "disabled"
    assert await article_count(pool, feeds["/good.xml"].id) == 4
    assert await article_count(pool, feeds["/bozo.xml"].id) == 3
    assert await article_count(pool, feeds["/dates.xml"].id) == 2
    assert await article_count(pool, feeds["/nolink.xml"].id) == 1
    assert summary.feeds_ok == 5 and summary.feeds_failed == 9
    assert summary.new == 10 and summary.rejected == 1
    assert summary.rejected_reasons == {"no link and no text": 1}
    far = await pool.fetchval("SELECT max(published_at) FROM articles WHERE guid = 'd2'")
    assert far.year < 2100  # the absurd date was replaced by the fetch time


async def test_conditional_get_across_polls(settings, pool, feed_server):
    feed_server.route("/e.xml", body=rss_document(items(3)), etag='"e1"')
    feed_server.route("/m.xml", body=rss_document(items(2, prefix="m")), last_modified="Mon, 1 X")
    feed_server.route("/none.xml", body=rss_document(items(2, prefix="n")))  # no validators
    feeds = await add(pool, feed_server, "/e.xml", "/m.xml", "/none.xml")
    first = await poll_once(pool, settings)
    assert first.feeds_ok == 3 and first.new == 7
    e = await feed_row(pool, feeds["/e.xml"].id)
    assert e.etag == '"e1"' and e.last_modified is None and e.last_success_at is not None

    assert (await poll_once(pool, settings)).polled == 0  # nothing due
    assert feed_server.total_hits() == 3  # the schedule held: nothing was due

    await store.make_due(pool)
    second = await poll_once(pool, settings)
    assert second.feeds_not_modified == 3 and second.new == 0
    assert feed_server.requests_to("/e.xml")[-1].headers["If-None-Match"] == '"e1"'
    assert feed_server.requests_to("/m.xml")[-1].headers["If-Modified-Since"] == "Mon, 1 X"
    # /none.xml sent the same bytes: recognised by their hash, not parsed again.
    assert (await feed_row(pool, feeds["/none.xml"].id)).last_outcome == "not_modified"

    feed_server.update("/e.xml", body=rss_document(items(5)), etag='"e2"')
    await store.make_due(pool)
    third = await poll_once(pool, settings)
    assert third.new == 2 and third.duplicate == 3
    assert (await feed_row(pool, feeds["/e.xml"].id)).etag == '"e2"'
    assert await article_count(pool) == 9


async def test_retry_after_sets_the_next_poll(settings, pool, feed_server):
    feed_server.route("/busy.xml", status=429, headers={"Retry-After": "1200"})
    feeds = await add(pool, feed_server, "/busy.xml")
    await poll_once(pool, settings)
    wait = await pool.fetchval(
        "SELECT EXTRACT(EPOCH FROM next_due_at - now()) FROM feeds WHERE id = $1",
        feeds["/busy.xml"].id,
    )
    assert 1190 <= wait <= 1200
    feed = await feed_row(pool, feeds["/busy.xml"].id)
    assert feed.last_outcome == "rate_limited" and "Retry-After 1200 s" in (feed.last_error or "")


async def test_failures_back_off_then_quarantine_then_recover(settings, pool, feed_server):
    s = with_(settings, max_consecutive_failures=3, backoff_base_s=30, backoff_max_s=7200)
    feed_server.route("/flaky.xml", status=500)
    feeds = await add(pool, feed_server, "/flaky.xml")
    fid = feeds["/flaky.xml"].id
    waits = []
    for _ in range(3):
        await poll_once(pool, s)
        waits.append(
            await pool.fetchval(
                "SELECT round(EXTRACT(EPOCH FROM next_due_at - now())) FROM feeds WHERE id=$1", fid
            )
        )
        await store.make_due(pool, fid)
    assert [float(w) for w in waits[:2]] == [30.0, 60.0]
    feed = await feed_row(pool, fid)
    assert feed.status == "quarantined" and feed.consecutive_failures == 3
    assert (
        feed.last_error
        == "quarantined after 3 failures in a row; last: HTTP 500 Internal Server Error"
    )
    assert 7190 <= float(waits[2]) <= 7200  # probed rarely from now on

    feed_server.update("/flaky.xml", status=200, body=rss_document(items(1)))
    summary = await poll_once(pool, s)  # made due above: the probe succeeds
    assert summary.feeds_ok == 1
    feed = await feed_row(pool, fid)
    assert feed.status == "active" and feed.consecutive_failures == 0 and feed.last_error is None


async def test_gone_feed_is_disabled_and_not_polled_again(settings, pool, feed_server):
    feed_server.route("/gone.xml", status=410)
    feeds = await add(pool, feed_server, "/gone.xml")
    await poll_once(pool, settings)
    await store.make_due(pool)
    await poll_once(pool, settings)
    assert feed_server.hits("/gone.xml") == 1
    assert (await feed_row(pool, feeds["/gone.xml"].id)).status == "disabled"


async def test_restart_resumes_without_duplicates(settings, pool, feed_server):
    """A poller killed mid-poll: what it stored stays, what it had claimed is polled by the
    next one when the lease ends, and feeds it finished are not fetched again."""
    s = with_(settings, feed_lease_s=2, fetch_concurrency=4)
    for i in range(4):
        feed_server.route(f"/fast{i}.xml", body=rss_document(items(5, prefix=f"fast{i}")))
        feed_server.route(
            f"/slow{i}.xml", body=rss_document(items(5, prefix=f"slow{i}")), delay_s=1.5
        )
    await add(pool, feed_server, *[f"/fast{i}.xml" for i in range(4)])
    await add(pool, feed_server, *[f"/slow{i}.xml" for i in range(4)])

    task = asyncio.create_task(poll_once(pool, s))
    await eventually(lambda: _at_least(article_count(pool), 20))
    await eventually(lambda: _true(sum(feed_server.hits(f"/slow{i}.xml") for i in range(4)) == 4))
    task.cancel()  # the "crash": slow feeds were fetched but never stored
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await article_count(pool) == 20

    # Right after the restart nothing is due: the leases still hold.
    assert (await poll_once(pool, s)).polled == 0
    await asyncio.sleep(2.1)
    resumed = await poll_once(pool, s)
    assert resumed.polled == 4 and resumed.new == 20
    assert all(feed_server.hits(f"/fast{i}.xml") == 1 for i in range(4))
    assert all(feed_server.hits(f"/slow{i}.xml") == 2 for i in range(4))
    assert await article_count(pool) == 40
    dupes = await pool.fetchval(
        "SELECT count(*) FROM (SELECT 1 FROM articles GROUP BY feed_id, dedup_key "
        "HAVING count(*) > 1) d"
    )
    assert dupes == 0


async def test_two_pollers_at_once_share_the_work(settings, pool, feed_server):
    s = with_(settings, fetch_concurrency=3)
    paths = [f"/f{i}.xml" for i in range(12)]
    for i, path in enumerate(paths):
        # The same stories in every feed: cross-feed copies are marked, once each.
        feed_server.route(path, body=rss_document(items(6, prefix="shared")), delay_s=0.1 * (i % 3))
    await add(pool, feed_server, *paths)
    pool2 = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=4)
    try:
        a, b = await asyncio.gather(poll_once(pool, s), poll_once(pool2, s))
    finally:
        await pool2.close()
    assert a.polled > 0 and b.polled > 0 and a.polled + b.polled == 12
    assert all(feed_server.hits(p) == 1 for p in paths)  # no feed fetched twice
    assert await article_count(pool) == 12 * 6
    assert a.new + b.new == 72 and a.copies + b.copies == 11 * 6
    originals = await pool.fetchval("SELECT count(*) FROM articles WHERE duplicate_of IS NULL")
    assert originals == 6


async def test_poller_loop_picks_up_new_feeds_and_stops(settings, feed_server):
    feed_server.route("/live.xml", body=rss_document(items(3)))
    poller = Poller(with_(settings, poll_tick_s=30))
    await poller.start()
    loop = asyncio.create_task(poller.run_forever())
    try:
        await asyncio.sleep(0.3)  # idle: nothing to poll, sleeping up to 30 s
        _, created = await poller.add_feed(feed_server.url("/live.xml"))  # wakes it
        assert created
        await eventually(lambda: _at_least(article_count(poller.pool), 3))
        assert await article_count(poller.pool) == 3
        status = await poller.status()
        assert status["running"] and status["feeds"] == {"active": 1}
        assert status["metrics"]["fetches"] == {"ok": 1}
        assert status["metrics"]["articles"] == {"new": 3}
        with pytest.raises(ValueError, match="scheme"):
            await poller.add_feed("ftp://example.com/feed")
    finally:
        poller.request_stop()
        await asyncio.wait_for(loop, timeout=10)
        await poller.close()
    assert not poller.running
