"""The digest as feeds (``/feeds/digest.{rss,atom,json}``) through the real app over a real
PostgreSQL database (stories made as :mod:`tests.support.digest` says): each format read back
with feedparser or checked against JSON Feed 1.1, ids and updated times as a story grows, the
filters of /v1/stories, the 422s, public access, the public URL, the empty feed, the page's
autodiscovery links. Caching: ``test_feeds_cache.py``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from email.utils import parsedate_to_datetime

import asyncpg
import httpx
import pytest

from cluster.settings import Settings
from serving.digest.formats import RENDERERS, digest_feed
from serving.digest.store import stories_updated
from serving.stories.ranking import list_stories, story_list_args
from serving.stories.schemas import StoryQuery
from tests.support.digest import (
    HOUR,
    Desk,
    app_client,
    check_json_feed,
    make_desk,
    parse,
    parsedate_or_iso,
    tag,
)


@pytest.fixture
async def desk(pool: asyncpg.Pool, settings: Settings) -> Desk:
    return await make_desk(pool, settings)


@pytest.fixture
async def client(desk: Desk) -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(desk.settings, desk.pool) as c:
        yield c


# --- the three formats ------------------------------------------------------------------------


async def test_each_format_parses_back_with_the_ranked_stories(
    desk: Desk, client: httpx.AsyncClient
) -> None:
    # B: 80 x 0.5^(2/24) = 75.4 beats A: 60 x 1.2 (3 sources) x 0.5^(1/24) = 70.0
    order = [tag(desk, "b1"), tag(desk, "a1")]
    for fmt, media in (("rss", "application/rss+xml"), ("atom", "application/atom+xml")):
        response = await client.get(f"/feeds/digest.{fmt}")
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == f"{media}; charset=utf-8"
        parsed = parse(response)
        assert parsed.version == ("rss20" if fmt == "rss" else "atom10")
        assert parsed.feed.title.startswith("Newsdesk")
        assert parsed.feed.link == "http://feeds.test/"
        assert [e.id for e in parsed.entries] == order
        b, a = parsed.entries
        assert b.title == "Headline b1" and b.link == "https://capitalwire.test/b1"
        assert a.summary == "Summary of Headline a1."
        assert [t.term for t in a.tags] == ["sport", "business"]
        assert a.newsdesk_importance == "60" and b.newsdesk_importance == "80"
        # updated: each story's last change; the feed's: the newest item's
        newest = max(parsedate_or_iso(e.updated) for e in parsed.entries).replace(microsecond=0)
        assert parsedate_or_iso(parsed.feed.updated).replace(microsecond=0) == newest
        assert parsedate_to_datetime(response.headers["last-modified"]) == newest
        assert parsedate_or_iso(a.published) == desk.now - HOUR
        # every member article's link, sources named
        for name in ("Capital Wire", "Harbour Herald", "Outback Bulletin"):
            assert name in a.content[0].value
        for key in ("a1", "a2", "a3"):
            assert f"https://{desk.articles[key].source.replace(' ', '').lower()}.test/{key}" in (
                a.content[0].value
            )
        # the article without a URL links to its record in the API, absolutely
        assert f"http://feeds.test/v1/articles/{desk.articles['b2'].id}" in b.content[0].value
        if fmt == "atom":
            related = [link.href for link in a.links if link.rel == "related"]
            assert len(related) == 3
            assert [au.name for au in a.authors] == [
                "Capital Wire",
                "Harbour Herald",
                "Outback Bulletin",
            ]

    response = await client.get("/feeds/digest.json")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/feed+json; charset=utf-8"
    doc = response.json()
    check_json_feed(doc)
    assert doc["feed_url"] == "http://feeds.test/feeds/digest.json"
    assert [i["id"] for i in doc["items"]] == order
    b, a = doc["items"]
    assert a["_newsdesk"]["importance"] == 60 and a["_newsdesk"]["n_sources"] == 3
    assert a["_newsdesk"]["sources"] == ["Capital Wire", "Harbour Herald", "Outback Bulletin"]
    assert [x["url"] for x in a["_newsdesk"]["articles"]] == [  # most important first
        "https://capitalwire.test/a1",
        "https://harbourherald.test/a2",
        "https://outbackbulletin.test/a3",
    ]
    assert a["tags"] == ["sport", "business"]
    assert [au["name"] for au in a["authors"]] == a["_newsdesk"]["sources"]
    assert a["summary"] == "Summary of Headline a1."
    assert a["content_text"].startswith("Summary of Headline a1.")


async def test_ids_stay_and_updated_moves_as_a_story_grows(
    desk: Desk, client: httpx.AsyncClient
) -> None:
    before = {fmt: await client.get(f"/feeds/digest.{fmt}") for fmt in ("rss", "atom", "json")}
    old_etag = before["atom"].headers["etag"]
    old = {e.id: e.updated for e in parse(before["atom"]).entries}
    old_json = {i["id"]: i["date_modified"] for i in before["json"].json()["items"]}

    # a fourth source joins story A (same embedding) with a higher importance
    await desk.add("Delta Daily", "a4", 0, desk.now, importance=85, topics=["sport"])
    assert desk.story["a4"] == desk.story["a1"]

    after = await client.get("/feeds/digest.atom")
    assert after.headers["etag"] != old_etag
    entries = {e.id: e for e in parse(after).entries}
    a_id, b_id = tag(desk, "a1"), tag(desk, "b1")
    assert set(entries) == set(old)  # same ids: the story kept its id
    assert parsedate_or_iso(entries[a_id].updated) > parsedate_or_iso(old[a_id])
    assert entries[b_id].updated == old[b_id]
    assert entries[a_id].newsdesk_importance == "85"
    assert parsedate_or_iso(parse(after).feed.updated) == parsedate_or_iso(entries[a_id].updated)
    rss = parse(await client.get("/feeds/digest.rss"))
    assert {e.id for e in rss.entries} == set(old)
    json_items = {i["id"]: i for i in (await client.get("/feeds/digest.json")).json()["items"]}
    assert json_items[a_id]["date_modified"] > old_json[a_id]
    assert json_items[b_id]["date_modified"] == old_json[b_id]

    # a summary arriving late for one of B's articles changes B (and the tag) too
    etag = after.headers["etag"]
    await desk.summarize("b2", 40, ["politics"])
    later = await client.get("/feeds/digest.atom")
    assert later.headers["etag"] != etag
    b_later = {e.id: e for e in parse(later).entries}[b_id]
    assert parsedate_or_iso(b_later.updated) > parsedate_or_iso(old[b_id])


async def test_the_documents_do_not_depend_on_the_clock(desk: Desk) -> None:
    """The same data renders to the same bytes at any time (the ETag is made without
    rendering, so it must): the rank score decays with the clock, the order and the output
    do not."""
    since = desk.now - 48 * HOUR
    knobs = story_list_args(desk.settings)
    rendered = []
    for later in (timedelta(0), 5 * HOUR):
        listing = await list_stories(
            desk.pool, StoryQuery(since=since), now=desk.now + later, **knobs
        )
        updated = await stories_updated(desk.pool, [s.id for s in listing.stories])
        feed = digest_feed(
            listing,
            updated,
            base_url="http://feeds.test/",
            self_url="http://feeds.test/feeds/digest.rss",
            alternates={},
            filters={},
            empty_updated=None,
        )
        assert [i.position for i in feed.items] == [1, 2, 3]
        rendered.append([render(feed) for render in RENDERERS.values()])
    assert (
        listing.stories[0].rank
        != (  # the scores moved...
            await list_stories(desk.pool, StoryQuery(since=since), now=desk.now, **knobs)
        )
        .stories[0]
        .rank
    )
    assert rendered[0] == rendered[1]  # ...the documents did not


# --- filters and errors -----------------------------------------------------------------------


async def test_filters_are_those_of_the_stories_api(desk: Desk, client: httpx.AsyncClient) -> None:
    async def ids(query: str) -> list[str]:
        response = await client.get(f"/feeds/digest.json?{query}")
        assert response.status_code == 200, response.text
        stories = await client.get(f"/v1/stories?{query}")
        doc = response.json()
        # the same stories in the same order as GET /v1/stories (given the same since)
        if "window" not in query:
            assert [i["_newsdesk"]["story_id"] for i in doc["items"]] == [
                s["id"] for s in stories.json()["stories"]
            ]
        return [i["id"] for i in doc["items"]]

    a, b, c = tag(desk, "a1"), tag(desk, "b1"), tag(desk, "c1")
    assert await ids("") == [b, a]
    assert await ids("topic=SPORT") == [a]
    assert await ids("source=harbour%20herald") == [b, a]
    assert await ids("source=Outback%20Bulletin") == [a]
    assert await ids("min_importance=70") == [b]
    assert await ids("limit=1") == [b]
    assert await ids("topic=nothing-like-it") == []
    since = (desk.now - 48 * HOUR).isoformat()
    assert await ids(f"since={since.replace('+', '%2B')}") == [b, a, c]
    assert await ids(f"since={since}") == [b, a, c]  # an unencoded "+": a space, accepted
    assert await ids("window=48") == [b, a, c]
    assert await ids("window=48&min_importance=85") == [c]

    rss = parse(await client.get("/feeds/digest.rss?topic=sport&min_importance=50"))
    assert rss.feed.title == "Newsdesk · top stories · topic sport · importance ≥ 50"
    self_link = next(link.href for link in rss.feed.links if link.rel == "self")
    assert self_link == "http://feeds.test/feeds/digest.rss?topic=sport&min_importance=50"


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("min_importance=500", "min_importance"),
        ("min_importance=high", "min_importance"),
        ("since=yesterday", "since"),
        ("limit=0", "limit"),
        ("limit=201", "limit"),
        ("topic=", "topic"),
        ("window=0", "window"),
        ("window=1000", "window"),
        ("window=soon", "window"),
        ("window=24&since=2026-01-01T00:00:00Z", "since or window"),
        ("colour=red", "colour"),
    ],
)
async def test_bad_parameters_are_422(
    pool: asyncpg.Pool, settings: Settings, query: str, field: str
) -> None:
    async with app_client(settings, pool) as client:
        for fmt in ("rss", "atom", "json"):
            response = await client.get(f"/feeds/digest.{fmt}?{query}")
            assert response.status_code == 422, (fmt, query)
            assert response.headers["content-type"].startswith("application/json")
            error = response.json()["error"]
            assert error["code"] == "validation_error"
            assert field in error["message"], error
            assert error["request_id"] == response.headers["x-request-id"]


# --- public, public URL, empty, page autodiscovery, OpenAPI ---------------------------------


async def test_public_behind_a_proxy_and_discoverable(desk: Desk) -> None:
    async with app_client(
        desk.settings,
        desk.pool,
        api_key="s3cret",
        public_url="https://news.example.org/desk",
        feeds_max_age_s=60,
    ) as client:
        response = await client.get("/feeds/digest.atom")  # no X-API-Key: public
        assert response.status_code == 200
        assert response.headers["cache-control"] == "public, max-age=60"
        parsed = parse(response)
        assert parsed.feed.link == "https://news.example.org/desk/"
        assert parsed.entries[0].id.startswith("tag:news.example.org,2026:story/")
        doc = (await client.get("/feeds/digest.json")).json()
        assert doc["feed_url"] == "https://news.example.org/desk/feeds/digest.json"
        b_item = doc["items"][0]
        b2 = desk.articles["b2"].id
        assert f"https://news.example.org/desk/v1/articles/{b2}" in b_item["content_html"]

        page = await client.get("/")
        found = 0
        for fmt, media in (
            ("rss", "application/rss+xml"),
            ("atom", "application/atom+xml"),
            ("json", "application/feed+json"),
        ):
            tag = f'<link rel="alternate" type="{media}"'
            assert tag in page.text and f'href="/feeds/digest.{fmt}"' in page.text
            feed = await client.get(f"/feeds/digest.{fmt}")
            assert feed.headers["content-type"].startswith(media)
            found += 1
        assert found == 3
        spec = (await client.get("/openapi.json")).json()
        for fmt in ("rss", "atom", "json"):
            op = spec["paths"][f"/feeds/digest.{fmt}"]["get"]
            assert "security" not in op
            assert {p["name"] for p in op["parameters"]} >= {"topic", "window", "since", "limit"}
            assert "304" in op["responses"]


async def test_an_empty_digest_is_a_valid_feed(pool: asyncpg.Pool, settings: Settings) -> None:
    async with app_client(settings, pool) as client:
        for fmt in ("rss", "atom"):
            response = await client.get(f"/feeds/digest.{fmt}")
            assert response.status_code == 200 and "last-modified" not in response.headers
            assert parse(response).entries == []
        doc = (await client.get("/feeds/digest.json")).json()
        check_json_feed(doc)
        assert doc["items"] == []
