"""The digest as feeds (``/feeds/digest.{rss,atom,json}``) through the real app over a real
PostgreSQL database: stories made by the real assignment (:func:`assign_articles`) from
articles stored as ingestion stores them and Results stored through the ResultStore; the
embeddings are chosen vectors (one per story), so no model is loaded. RSS and Atom are read
back with feedparser, JSON Feed checked against the 1.1 spec's required fields."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

import asyncpg
import feedparser
import httpx
import numpy as np
import pytest
import uvicorn

from cluster.local_cluster import free_port
from cluster.settings import Settings
from core.article import Article
from core.articles import load_articles
from ingestion import store as ingest_store
from ingestion.normalizer import NormalizedEntry
from serving.http.conditional import etag_matches, strong_etag, unchanged_since
from serving.local import LocalBackend, local_app
from serving.store import ResultStore
from serving.stories.embedder import EMBEDDING_DIM
from serving.stories.feed_store import stories_updated
from serving.stories.feeds import RENDERERS, digest_feed
from serving.stories.ranking import list_stories, story_list_args
from serving.stories.schemas import StoryQuery
from serving.stories.store import assign_articles
from tests.serve_support import make_result

HOUR = timedelta(hours=1)
TAG = "tag:feeds.test,2026:story/"


def _no_model() -> None:
    raise AssertionError("the feeds must never load the model")


@dataclass
class Desk:
    """The stored stories: ``story[key]`` is the story id of an article key."""

    pool: asyncpg.Pool
    settings: Settings
    now: datetime
    articles: dict[str, Article] = field(default_factory=dict)
    story: dict[str, int] = field(default_factory=dict)

    async def add(
        self,
        feed: str,
        key: str,
        story: int,
        published: datetime,
        *,
        importance: float | None,
        topics: list[str] = (),  # type: ignore[assignment]
        url: bool = True,
    ) -> None:
        """Store one article in feed ``feed``, give it a Result (unless ``importance`` is
        None) and assign it: the same ``story`` number means the same embedding."""
        slug = feed.replace(" ", "").lower()
        db_feed, _ = await ingest_store.add_feed(self.pool, f"https://{slug}.test/rss", title=feed)
        text = f"Report {key} from {feed}. " + "It has the details of what happened. " * 3
        entry = NormalizedEntry(
            dedup_key=key,
            article=Article(
                title=f"Headline {key}",
                text=text,
                guid=key,
                source=feed,
                published=published,
                url=f"https://{slug}.test/{key}" if url else None,
            ),
        )
        async with self.pool.acquire() as conn, conn.transaction():
            await ingest_store.store_articles(conn, db_feed.id, [entry])
        stored = next(
            a for a in await load_articles(self.pool, feed_id=db_feed.id) if a.guid == key
        )
        self.articles[key] = stored
        if importance is not None:
            await self.summarize(key, importance, list(topics))
        vector = np.zeros((1, EMBEDDING_DIM), dtype=np.float32)
        vector[0, story] = 1.0
        async with self.pool.acquire() as conn:
            report = await assign_articles(conn, [stored], vector, threshold=0.8, window_h=72)
        assert report.assigned == 1
        self.story[key] = await self.pool.fetchval(
            "SELECT story_id FROM story_articles WHERE article_id = $1", stored.id
        )

    async def summarize(self, key: str, importance: float, topics: list[str]) -> None:
        article = self.articles[key]
        result = make_result(article, importance=importance, topics=topics)
        assert await ResultStore(self.pool).save(article, result) == "article"


@pytest.fixture
async def desk(pool: asyncpg.Pool, settings: Settings) -> Desk:
    """Story A (3 sources, importance 60, 1 h), B (80, 1 source, 2 h, an article without a
    URL), C (90, 30 h: out of the default 24 h), D (no summary yet: never listed)."""
    desk = Desk(pool, settings, datetime.now(UTC).replace(microsecond=0))
    now = desk.now
    await desk.add("Capital Wire", "a1", 0, now - HOUR, importance=60, topics=["sport"])
    await desk.add("Harbour Herald", "a2", 0, now - HOUR, importance=55, topics=["business"])
    await desk.add("Outback Bulletin", "a3", 0, now - HOUR, importance=50, topics=["sport"])
    await desk.add("Capital Wire", "b1", 1, now - 2 * HOUR, importance=80, topics=["politics"])
    await desk.add("Harbour Herald", "b2", 1, now - 2 * HOUR, importance=None, url=False)
    await desk.add("Outback Bulletin", "c1", 2, now - 30 * HOUR, importance=90, topics=["war"])
    await desk.add("Capital Wire", "d1", 3, now - HOUR, importance=None)
    assert len({desk.story[k] for k in ("a1", "b1", "c1", "d1")}) == 4
    assert desk.story["a1"] == desk.story["a2"] == desk.story["a3"]
    return desk


def _app_client(settings: Settings, pool: asyncpg.Pool, **changes: Any) -> httpx.AsyncClient:
    if changes:
        settings = Settings(**{**settings.model_dump(), **changes})
    backend = LocalBackend(settings, _no_model, store=ResultStore(pool))  # type: ignore[arg-type]
    transport = httpx.ASGITransport(app=local_app(backend, settings))
    return httpx.AsyncClient(transport=transport, base_url="http://feeds.test")


@pytest.fixture
async def client(desk: Desk) -> AsyncIterator[httpx.AsyncClient]:
    async with _app_client(desk.settings, desk.pool) as c:
        yield c


def _tag(desk: Desk, key: str) -> str:
    return f"{TAG}{desk.story[key]}"


def _parse(response: httpx.Response) -> feedparser.FeedParserDict:
    parsed = feedparser.parse(response.content)
    assert not parsed.bozo, parsed.get("bozo_exception")
    return parsed


def check_json_feed(doc: dict[str, Any]) -> None:
    """The JSON Feed 1.1 rules (https://jsonfeed.org/version/1.1) this feed must meet."""
    assert doc["version"] == "https://jsonfeed.org/version/1.1"
    assert isinstance(doc["title"], str) and doc["title"]
    for name in ("home_page_url", "feed_url"):
        assert doc[name].startswith(("http://", "https://")), name
    assert isinstance(doc["items"], list)
    for author in doc.get("authors", []):
        assert set(author) <= {"name", "url", "avatar"} and author
    ids = [item["id"] for item in doc["items"]]
    assert len(ids) == len(set(ids))
    for item in doc["items"]:
        assert isinstance(item["id"], str) and item["id"]
        assert "content_html" in item or "content_text" in item
        assert item["url"].startswith(("http://", "https://"))
        for name in ("date_published", "date_modified"):
            datetime.fromisoformat(item[name])  # RFC 3339
        assert all(isinstance(t, str) for t in item.get("tags", []))
        unknown = {k for k in item if k.startswith("_")} - {"_newsdesk"}
        assert not unknown
        extra = set(item) - {
            "id", "url", "external_url", "title", "content_html", "content_text", "summary",
            "image", "banner_image", "date_published", "date_modified", "authors", "tags",
            "language", "attachments", "_newsdesk",
        }  # fmt: skip
        assert not extra, extra


# --- the three formats ------------------------------------------------------------------------


async def test_each_format_parses_back_with_the_ranked_stories(
    desk: Desk, client: httpx.AsyncClient
) -> None:
    # B: 80 x 0.5^(2/24) = 75.4 beats A: 60 x 1.2 (3 sources) x 0.5^(1/24) = 70.0
    order = [_tag(desk, "b1"), _tag(desk, "a1")]
    for fmt, media in (("rss", "application/rss+xml"), ("atom", "application/atom+xml")):
        response = await client.get(f"/feeds/digest.{fmt}")
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == f"{media}; charset=utf-8"
        parsed = _parse(response)
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


def parsedate_or_iso(value: str) -> datetime:
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return parsedate_to_datetime(value)


async def test_ids_stay_and_updated_moves_as_a_story_grows(
    desk: Desk, client: httpx.AsyncClient
) -> None:
    before = {fmt: await client.get(f"/feeds/digest.{fmt}") for fmt in ("rss", "atom", "json")}
    old_etag = before["atom"].headers["etag"]
    old = {e.id: e.updated for e in _parse(before["atom"]).entries}
    old_json = {i["id"]: i["date_modified"] for i in before["json"].json()["items"]}

    # a fourth source joins story A (same embedding) with a higher importance
    await desk.add("Delta Daily", "a4", 0, desk.now, importance=85, topics=["sport"])
    assert desk.story["a4"] == desk.story["a1"]

    after = await client.get("/feeds/digest.atom")
    assert after.headers["etag"] != old_etag
    entries = {e.id: e for e in _parse(after).entries}
    a_id, b_id = _tag(desk, "a1"), _tag(desk, "b1")
    assert set(entries) == set(old)  # same ids: the story kept its id
    assert parsedate_or_iso(entries[a_id].updated) > parsedate_or_iso(old[a_id])
    assert entries[b_id].updated == old[b_id]
    assert entries[a_id].newsdesk_importance == "85"
    assert parsedate_or_iso(_parse(after).feed.updated) == parsedate_or_iso(entries[a_id].updated)
    rss = _parse(await client.get("/feeds/digest.rss"))
    assert {e.id for e in rss.entries} == set(old)
    json_items = {i["id"]: i for i in (await client.get("/feeds/digest.json")).json()["items"]}
    assert json_items[a_id]["date_modified"] > old_json[a_id]
    assert json_items[b_id]["date_modified"] == old_json[b_id]

    # a summary arriving late for one of B's articles changes B (and the tag) too
    etag = after.headers["etag"]
    await desk.summarize("b2", 40, ["politics"])
    later = await client.get("/feeds/digest.atom")
    assert later.headers["etag"] != etag
    b_later = {e.id: e for e in _parse(later).entries}[b_id]
    assert parsedate_or_iso(b_later.updated) > parsedate_or_iso(old[b_id])


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


async def test_a_story_leaving_the_window_changes_the_tag(
    desk: Desk, client: httpx.AsyncClient
) -> None:
    """A moving window loses stories with no write to the database: the tag must change."""
    wide = await client.get("/feeds/digest.json?window=31")
    assert _tag(desk, "c1") in [i["id"] for i in wide.json()["items"]]
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
    assert _tag(desk, "c1") not in [i["id"] for i in narrow.json()["items"]]


async def test_a_feed_reader_polls_a_served_app_with_its_validators(desk: Desk) -> None:
    """feedparser fetching over real HTTP, as a reader does: the second poll, with the ETag and
    Last-Modified it kept, is a 304; after the story grows, a 200 with the grown story."""
    backend = LocalBackend(desk.settings, _no_model)  # type: ignore[arg-type]
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

    a, b, c = _tag(desk, "a1"), _tag(desk, "b1"), _tag(desk, "c1")
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

    rss = _parse(await client.get("/feeds/digest.rss?topic=sport&min_importance=50"))
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
    async with _app_client(settings, pool) as client:
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
    async with _app_client(
        desk.settings,
        desk.pool,
        api_key="s3cret",
        public_url="https://news.example.org/desk",
        feeds_max_age_s=60,
    ) as client:
        response = await client.get("/feeds/digest.atom")  # no X-API-Key: public
        assert response.status_code == 200
        assert response.headers["cache-control"] == "public, max-age=60"
        parsed = _parse(response)
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
    async with _app_client(settings, pool) as client:
        for fmt in ("rss", "atom"):
            response = await client.get(f"/feeds/digest.{fmt}")
            assert response.status_code == 200 and "last-modified" not in response.headers
            assert _parse(response).entries == []
        doc = (await client.get("/feeds/digest.json")).json()
        check_json_feed(doc)
        assert doc["items"] == []


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
