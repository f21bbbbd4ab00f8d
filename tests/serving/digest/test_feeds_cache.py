"""The digest feeds' caching through the real app over a real PostgreSQL database: strong
ETags and Last-Modified, 304s on If-None-Match and If-Modified-Since, new tags when a story
grows or leaves the window, a feed reader (feedparser) polling a served app with the
validators it kept; and the conditional helpers themselves."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime

import asyncpg
import feedparser
import httpx
import pytest
import uvicorn

from cluster.local_cluster import free_port
from cluster.settings import Settings
from serving.deployments.local import LocalBackend, local_app
from serving.http.conditional import etag_matches, strong_etag, unchanged_since
from tests.support.digest import (
    Desk,
    app_client,
    make_desk,
    no_model,
    tag,
)


@pytest.fixture
async def desk(pool: asyncpg.Pool, settings: Settings) -> Desk:
    return await make_desk(pool, settings)


@pytest.fixture
async def client(desk: Desk) -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(desk.settings, desk.pool) as c:
        yield c


# --- caching ----------------------------------------------------------------------------------


async def test_conditional_requests(desk: Desk, client: httpx.AsyncClient) -> None:
    for fmt in ("rss", "atom", "json"):
        url = f"/feeds/digest.{fmt}"
        first = await client.get(url)
        etag, modified = first.headers["etag"], first.headers["last-modified"]
        assert etag.startswith('"') and not etag.startswith("W/")  # strong
        assert first.headers["cache-control"] == "public, max-age=300"
        second = await client.get(url)  # unchanged data: the same bytes under the same tag
        assert second.content == first.content and second.headers["etag"] == etag

        for given in (etag, f'"nope", {etag}', f"W/{etag}", "*"):
            hit = await client.get(url, headers={"If-None-Match": given})
            assert hit.status_code == 304, given
            assert hit.content == b""
            assert hit.headers["etag"] == etag and "max-age" in hit.headers["cache-control"]
        miss = await client.get(url, headers={"If-None-Match": '"something-else"'})
        assert miss.status_code == 200 and miss.content == first.content

        assert (await client.get(url, headers={"If-Modified-Since": modified})).status_code == 304
        at = parsedate_to_datetime(modified)
        earlier = (at - timedelta(seconds=1)).strftime("%a, %d %b %Y %H:%M:%S GMT")
        assert (await client.get(url, headers={"If-Modified-Since": earlier})).status_code == 200
        # If-None-Match wins over If-Modified-Since; a malformed date is ignored
        both = {"If-None-Match": '"other"', "If-Modified-Since": modified}
        assert (await client.get(url, headers=both)).status_code == 200
        bad_date = {"If-Modified-Since": "yesterday"}
        assert (await client.get(url, headers=bad_date)).status_code == 200

    # the tags differ by format and by query
    tags = {
        (await client.get(u)).headers["etag"]
        for u in (
            "/feeds/digest.rss",
            "/feeds/digest.atom",
            "/feeds/digest.json",
            "/feeds/digest.rss?topic=sport",
        )
    }
    assert len(tags) == 4

    # a story that grows: the old tag no longer matches, nor the old date
    etag = (await client.get("/feeds/digest.rss")).headers["etag"]
    modified = (await client.get("/feeds/digest.rss")).headers["last-modified"]
    await desk.add("Delta Daily", "b3", 1, desk.now, importance=70, topics=["politics"])
    grown = await client.get("/feeds/digest.rss", headers={"If-None-Match": etag})
    assert grown.status_code == 200 and grown.headers["etag"] != etag
    grown_at = parsedate_to_datetime(grown.headers["last-modified"])
    assert grown_at >= parsedate_to_datetime(modified)  # to the second: the tag tells


async def test_a_story_leaving_the_window_changes_thetag(
    desk: Desk, client: httpx.AsyncClient
) -> None:
    """A moving window loses stories with no write to the database: the tag must change."""
    wide = await client.get("/feeds/digest.json?window=31")
    assert tag(desk, "c1") in [i["id"] for i in wide.json()["items"]]
    await desk.pool.execute(
        "UPDATE stories SET last_published_at = last_published_at - interval '2 hours', "
        "updated_at = $2 WHERE id = $1",
        desk.story["c1"],
        datetime(2020, 1, 1, tzinfo=UTC),  # an old change time: only the window moved
    )
    await desk.pool.execute(
        "UPDATE articles SET published_at = published_at - interval '2 hours' WHERE id = $1",
        desk.articles["c1"].id,
    )
    narrow = await client.get(
        "/feeds/digest.json?window=31", headers={"If-None-Match": wide.headers["etag"]}
    )
    assert narrow.status_code == 200
    assert tag(desk, "c1") not in [i["id"] for i in narrow.json()["items"]]


async def test_a_feed_reader_polls_a_served_app_with_its_validators(desk: Desk) -> None:
    """feedparser fetching over real HTTP, as a reader does: the second poll, with the ETag and
    Last-Modified it kept, is a 304; after the story grows, a 200 with the grown story."""
    backend = LocalBackend(desk.settings, no_model)  # type: ignore[arg-type]
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            local_app(backend, desk.settings), host="127.0.0.1", port=port, log_level="error"
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        for _ in range(600):
            if server.started:
                break
            await asyncio.sleep(0.05)
        assert server.started
        for fmt in ("rss", "atom"):
            url = f"http://127.0.0.1:{port}/feeds/digest.{fmt}"
            first = await asyncio.to_thread(feedparser.parse, url)
            assert first.status == 200 and not first.bozo and len(first.entries) == 2
            again = await asyncio.to_thread(
                feedparser.parse, url, etag=first.etag, modified=first.modified
            )
            assert again.status == 304 and again.entries == []
            by_date = await asyncio.to_thread(feedparser.parse, url, modified=first.modified)
            assert by_date.status == 304
        await desk.add("Delta Daily", f"a-{port}", 0, desk.now, importance=85, topics=["sport"])
        grown = await asyncio.to_thread(feedparser.parse, url, etag=first.etag)
        assert grown.status == 200 and grown.etag != first.etag
        top = f"tag:127.0.0.1,2026:story/{desk.story['a1']}"
        assert grown.entries[0].id == top  # A, grown: now the top story, under the same id
    finally:
        server.should_exit = True
        await asyncio.to_thread(thread.join, 10)


# --- the conditional helpers ------------------------------------------------------------------


def test_conditional_helpers() -> None:
    tag = strong_etag("a", "b")
    assert tag == strong_etag("a", "b") != strong_etag("a", "c") != strong_etag("ab")
    assert etag_matches(tag, tag) and etag_matches(f"W/{tag}", tag)
    assert etag_matches(f'"x", {tag}', tag) and etag_matches(" * ", tag)
    assert not etag_matches('"x"', tag) and not etag_matches("", tag)
    at = datetime(2026, 11, 30, 12, 0, 0, 500_000, tzinfo=UTC)
    assert unchanged_since(at, at.replace(microsecond=0))  # HTTP-dates have no fractions
    assert not unchanged_since(at, at - timedelta(seconds=1))
    assert not unchanged_since(None, at) and not unchanged_since(at, None)
