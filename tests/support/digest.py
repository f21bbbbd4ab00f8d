"""Stories for the digest-feed tests (``tests/serving/digest/test_feeds*.py``), stored for real:
articles as ingestion stores them, Results through the ResultStore, stories by the real assignment
(:func:`assign_articles`) from chosen embeddings (one vector per story), so no model is
loaded; the app over them in-process; and the checks every format test reads back with."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

import asyncpg
import feedparser
import httpx
import numpy as np

from cluster.settings import Settings
from core.article import Article
from core.article_rows import load_articles
from ingestion import store as ingest_store
from ingestion.normalizer import NormalizedEntry
from serving.deployments.local import LocalBackend, local_app
from serving.stories.embedder import EMBEDDING_DIM
from serving.stories.store import assign_articles
from serving.summaries.result_store import ResultStore
from tests.support.serve import make_result

HOUR = timedelta(hours=1)
TAG = "tag:feeds.test,2026:story/"


def no_model() -> None:
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


async def make_desk(pool: asyncpg.Pool, settings: Settings) -> Desk:
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


def app_client(settings: Settings, pool: asyncpg.Pool, **changes: Any) -> httpx.AsyncClient:
    if changes:
        settings = Settings(**{**settings.model_dump(), **changes})
    backend = LocalBackend(settings, no_model, store=ResultStore(pool))  # type: ignore[arg-type]
    transport = httpx.ASGITransport(app=local_app(backend, settings))
    return httpx.AsyncClient(transport=transport, base_url="http://feeds.test")


def tag(desk: Desk, key: str) -> str:
    return f"{TAG}{desk.story[key]}"


def parse(response: httpx.Response) -> feedparser.FeedParserDict:
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


def parsedate_or_iso(value: str) -> datetime:
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return parsedate_to_datetime(value)
