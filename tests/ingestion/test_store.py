"""The store against real PostgreSQL: feed CRUD, claiming, idempotent batch inserts, and
cross-feed duplicate marking, also under concurrency; the scheduling policy."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import asyncpg

from cluster.settings import Settings
from core.article import Article
from core.article_rows import load_articles
from ingestion import store
from ingestion.normalizer import NormalizedEntry, dedup_key
from ingestion.schedule import ACTIVE, DISABLED, QUARANTINED, after_failure, after_success

WHEN = datetime(2025, 6, 10, 4, 0, tzinfo=UTC)


def entry(i: int, *, text: str | None = None, prefix: str = "s") -> NormalizedEntry:
    a = Article(
        title=f"Title {prefix}{i}",
        text=text if text is not None else f"Text of {prefix}{i}.",
        url=f"https://news.example.com/{prefix}/{i}",
        guid=f"{prefix}-{i}",
        published=WHEN,
        source="Example",
    )
    return NormalizedEntry(dedup_key(a.guid, a.url, a.title, a.text), a)


async def test_feed_crud(pool):
    feed, created = await store.add_feed(pool, "https://a.example/rss", title="A", interval_s=600)
    assert created and feed.status == ACTIVE and feed.interval_s == 600 and feed.title == "A"
    again, created = await store.add_feed(pool, "https://a.example/rss", title="other")
    assert not created and again.id == feed.id and again.title == "A"
    assert (await store.get_feed(pool, feed.id)).url == feed.url  # type: ignore[union-attr]
    assert (await store.get_feed(pool, str(feed.id))) is not None
    assert [f.url for f in await store.list_feeds(pool)] == ["https://a.example/rss"]

    disabled = await store.set_feed_status(pool, feed.url, DISABLED)
    assert disabled is not None and disabled.status == DISABLED
    assert await store.count_due(pool) == 0  # disabled feeds are never due
    enabled = await store.set_feed_status(pool, feed.id, ACTIVE)
    assert enabled is not None and enabled.status == ACTIVE and enabled.consecutive_failures == 0

    removed = await store.remove_feed(pool, feed.url)
    assert removed is not None and removed.id == feed.id
    assert await store.remove_feed(pool, feed.id) is None
    assert await store.list_feeds(pool) == []


async def test_claims_are_exclusive_and_leased(pool):
    for i in range(10):
        await store.add_feed(pool, f"https://h.example/{i}")
    assert await store.count_due(pool) == 10
    (_, a), (_, b) = await asyncio.gather(
        store.claim_due_feeds(pool, limit=6, lease_s=60),
        store.claim_due_feeds(pool, limit=6, lease_s=60),
    )
    ids_a, ids_b = {f.id for f in a}, {f.id for f in b}
    assert not ids_a & ids_b and len(ids_a | ids_b) == 10
    assert await store.count_due(pool) == 0  # all leased
    _, none = await store.claim_due_feeds(pool, limit=10, lease_s=60)
    assert none == []
    # The lease ends: a feed whose poller vanished is due again.
    await pool.execute("UPDATE feeds SET next_due_at = now() - interval '1 second'")
    _, again = await store.claim_due_feeds(pool, limit=10, lease_s=60)
    assert len(again) == 10


async def test_record_poll_needs_the_lease(pool):
    feed, _ = await store.add_feed(pool, "https://h.example/x")
    token, claimed = await store.claim_due_feeds(pool, limit=1, lease_s=60)
    assert [f.id for f in claimed] == [feed.id]
    # Someone else took over after our lease ran out:
    await pool.execute("UPDATE feeds SET next_due_at = now() - interval '1 second'")
    token2, _ = await store.claim_due_feeds(pool, limit=1, lease_s=60)
    async with pool.acquire() as conn:
        stale = await store.record_poll(conn, feed.id, token, after_success("ok", interval_s=900))
        fresh = await store.record_poll(conn, feed.id, token2, after_success("ok", interval_s=900))
    assert not stale and fresh


async def test_inserts_are_idempotent(pool):
    feed, _ = await store.add_feed(pool, "https://h.example/f")
    entries = [entry(i) for i in range(5)]
    async with pool.acquire() as conn:
        first = await store.store_articles(conn, feed.id, entries)
        second = await store.store_articles(conn, feed.id, [*entries, entry(5)])
    assert (first.new, first.duplicate) == (5, 0)
    assert (second.new, second.duplicate) == (1, 5)
    assert await pool.fetchval("SELECT count(*) FROM articles") == 6
    stored = await load_articles(pool, feed_id=feed.id, limit=10)
    assert {a.guid for a in stored} == {f"s-{i}" for i in range(6)}
    assert all(a.source == "Example" and a.published == WHEN for a in stored)


async def test_same_text_from_another_feed_is_marked_duplicate(pool):
    a, _ = await store.add_feed(pool, "https://a.example/f")
    b, _ = await store.add_feed(pool, "https://b.example/f")
    async with pool.acquire() as conn:
        first = await store.store_articles(conn, a.id, [entry(1), entry(2)])
        # Same title+text under other keys in feed B; and an empty-text article.
        copies = [entry(1, prefix="s"), entry(3, prefix="b")]
        copies[0] = NormalizedEntry("other-key", copies[0].article)
        second = await store.store_articles(conn, b.id, copies)
        blank_a = await store.store_articles(conn, a.id, [entry(9, text="")])
        blank_b = await store.store_articles(conn, b.id, [entry(9, text="", prefix="s")])
    assert (first.copies, second.new, second.copies) == (0, 2, 1)
    assert (blank_a.copies, blank_b.copies) == (0, 0)  # no text, no story to repeat
    orig = await pool.fetchval("SELECT id FROM articles WHERE feed_id=$1 AND guid='s-1'", a.id)
    dup = await pool.fetchrow("SELECT duplicate_of FROM articles WHERE dedup_key='other-key'")
    assert dup["duplicate_of"] == orig
    loaded = await load_articles(pool, include_copies=False, limit=50)
    assert all(x.duplicate_of is None for x in loaded) and len(loaded) == 5


async def test_concurrent_writers_never_duplicate(settings: Settings, pool):
    """Two pollers storing one feed's batch and the same texts for other feeds, at once:
    one row per (feed, key), one original per text, every other copy points to it."""
    feeds = [(await store.add_feed(pool, f"https://c.example/{i}"))[0] for i in range(3)]
    batch = [entry(i) for i in range(60)]
    other = asyncpg.create_pool(settings.database_url, min_size=2, max_size=4)
    async with other as pool2:

        async def write(p: asyncpg.Pool, feed_id: int) -> store.StoreCounts:
            async with p.acquire() as conn, conn.transaction():
                return await store.store_articles(conn, feed_id, batch)

        for _ in range(3):
            results = await asyncio.gather(
                write(pool, feeds[0].id),
                write(pool2, feeds[0].id),
                write(pool, feeds[1].id),
                write(pool2, feeds[2].id),
            )
        assert sum(r.new for r in results) == 0  # the last round found everything stored
    rows = await pool.fetch(
        "SELECT feed_id, dedup_key, count(*) AS n FROM articles GROUP BY 1, 2 HAVING count(*) > 1"
    )
    assert rows == []
    assert await pool.fetchval("SELECT count(*) FROM articles") == 3 * 60
    per_text = await pool.fetch(
        "SELECT content_hash, count(*) FILTER (WHERE duplicate_of IS NULL) AS originals, "
        "count(*) AS n FROM articles GROUP BY 1"
    )
    assert len(per_text) == 60
    assert all(r["originals"] == 1 and r["n"] == 3 for r in per_text)
    dangling = await pool.fetchval(
        "SELECT count(*) FROM articles a JOIN articles o ON o.id = a.duplicate_of "
        "WHERE o.duplicate_of IS NOT NULL OR o.content_hash <> a.content_hash"
    )
    assert dangling == 0


# --- the scheduling policy ------------------------------------------------------------------------


def test_backoff_doubles_and_is_capped(tmp_path):
    s = Settings(
        state_dir=tmp_path, backoff_base_s=60, backoff_max_s=600, max_consecutive_failures=10
    )
    delays = [
        after_failure("http_error", "x", failures_before=n, settings=s).due_in_s for n in range(6)
    ]
    assert delays == [60, 120, 240, 480, 600, 600]


def test_quarantine_after_n_failures_keeps_the_reason(tmp_path):
    s = Settings(state_dir=tmp_path, max_consecutive_failures=3, backoff_max_s=86400)
    state = after_failure("timeout", "no answer within 20 s", failures_before=2, settings=s)
    assert state.status == QUARANTINED and state.consecutive_failures == 3
    assert state.last_error == "quarantined after 3 failures in a row; last: no answer within 20 s"
    assert state.due_in_s == 86400
    assert after_success("ok", interval_s=900).status == ACTIVE


def test_retry_after_wins_over_a_shorter_backoff(tmp_path):
    s = Settings(state_dir=tmp_path, backoff_base_s=60)
    state = after_failure("rate_limited", "429", failures_before=0, settings=s, retry_after_s=900)
    assert state.due_in_s == 900 and state.status == ACTIVE


def test_gone_disables(tmp_path):
    s = Settings(state_dir=tmp_path)
    state = after_failure("gone", "HTTP 410 Gone", failures_before=0, settings=s, gone=True)
    assert state.status == DISABLED and "410" in (state.last_error or "")
