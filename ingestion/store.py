"""PostgreSQL side of ingestion: feeds (CRUD, claiming, state) and articles (batch inserts).

Guarantees, all enforced by PostgreSQL rather than by a single process:
- an article is stored once per feed: ``UNIQUE (feed_id, dedup_key)`` and
  ``INSERT ... ON CONFLICT DO NOTHING``, so re-polls, restarts and two pollers are harmless;
- the same text already stored (from another feed, or under another key) is marked
  ``duplicate_of`` the first copy; ``article_contents`` holds the first copy per content hash
  under a primary key, so two pollers storing one text at once agree on which is first;
- a due feed is handed to one poller at a time: ``claim_due_feeds`` locks due rows with
  ``FOR UPDATE SKIP LOCKED`` and pushes ``next_due_at`` forward by a lease. A poller that dies
  mid-fetch loses nothing: the feed is due again when the lease ends, and the schedule lives
  in the table, so a restarted poller resumes from it.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

import asyncpg

from ingestion.normalizer import NormalizedEntry
from ingestion.schedule import ACTIVE, DISABLED, FeedState

Db = asyncpg.Pool | asyncpg.Connection


@dataclass(slots=True)
class Feed:
    id: int
    url: str
    title: str | None
    interval_s: int
    status: str
    etag: str | None
    last_modified: str | None
    next_due_at: datetime
    last_fetched_at: datetime | None
    last_success_at: datetime | None
    last_outcome: str | None
    last_http_status: int | None
    last_error: str | None
    consecutive_failures: int
    articles_total: int
    created_at: datetime
    site_url: str | None
    language: str | None
    body_hash: str | None
    category: str | None

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> Feed:
        return cls(**{f.name: row[f.name] for f in fields(cls)})


FEED_COLUMNS = ", ".join(f.name for f in fields(Feed))


@dataclass(slots=True)
class StoreCounts:
    new: int = 0
    duplicate: int = 0  # already stored from this feed
    copies: int = 0  # stored, and marked duplicate_of an earlier identical article


class FeedNotFound(LookupError):
    pass


# --- feeds: CRUD ---------------------------------------------------------------------------


def _feed_ref(url_or_id: str | int) -> tuple[str, Any]:
    if isinstance(url_or_id, int) or (isinstance(url_or_id, str) and url_or_id.isdigit()):
        return "id = $1", int(url_or_id)
    return "url = $1", str(url_or_id).strip()


async def add_feed(
    db: Db,
    url: str,
    *,
    title: str | None = None,
    interval_s: int = 900,
    category: str | None = None,
) -> tuple[Feed, bool]:
    """(feed, created): an existing feed with this URL is returned unchanged."""
    existing = await get_feed(db, url)
    if existing is not None:  # looked up first: a conflicting INSERT would burn an id
        return existing, False
    row = await db.fetchrow(
        f"INSERT INTO feeds (url, title, interval_s, category) VALUES ($1, $2, $3, $4) "
        f"ON CONFLICT (url) DO NOTHING RETURNING {FEED_COLUMNS}",
        url.strip(),
        title,
        interval_s,
        category,
    )
    if row is not None:
        return Feed.from_row(row), True
    existing = await get_feed(db, url)
    assert existing is not None
    return existing, False


async def get_feed(db: Db, url_or_id: str | int) -> Feed | None:
    where, value = _feed_ref(url_or_id)
    row = await db.fetchrow(f"SELECT {FEED_COLUMNS} FROM feeds WHERE {where}", value)
    return Feed.from_row(row) if row else None


async def list_feeds(
    db: Db,
    *,
    status: str | None = None,
    url: str | None = None,
    after_id: int = 0,
    limit: int | None = None,
) -> list[Feed]:
    """Feeds by id, optionally only those in ``status`` or with ``url``; a page of ``limit``
    feeds after id ``after_id`` (keyset paging: feeds added or removed meanwhile shift
    nothing)."""
    rows = await db.fetch(
        f"SELECT {FEED_COLUMNS} FROM feeds "
        f"WHERE id > $1 AND ($2::text IS NULL OR status = $2) AND ($3::text IS NULL OR url = $3) "
        f"ORDER BY id LIMIT $4",
        after_id,
        status,
        url.strip() if url is not None else None,
        limit,
    )
    return [Feed.from_row(r) for r in rows]


async def remove_feed(db: Db, url_or_id: str | int) -> Feed | None:
    """Delete a feed and its articles; the deleted feed, or None if there was none."""
    where, value = _feed_ref(url_or_id)
    row = await db.fetchrow(f"DELETE FROM feeds WHERE {where} RETURNING {FEED_COLUMNS}", value)
    return Feed.from_row(row) if row else None


async def set_feed_status(db: Db, url_or_id: str | int, status: str) -> Feed | None:
    """Enable (active, failures reset, due now) or disable a feed by hand."""
    where, value = _feed_ref(url_or_id)
    if status == ACTIVE:
        sql = (
            f"UPDATE feeds SET status = 'active', consecutive_failures = 0, "
            f"next_due_at = now(), last_error = NULL WHERE {where} RETURNING {FEED_COLUMNS}"
        )
    elif status == DISABLED:
        sql = (
            f"UPDATE feeds SET status = 'disabled', last_error = 'disabled by hand' "
            f"WHERE {where} RETURNING {FEED_COLUMNS}"
        )
    else:
        raise ValueError(f"cannot set status {status!r} by hand")
    row = await db.fetchrow(sql, value)
    return Feed.from_row(row) if row else None


async def feed_status_counts(db: Db) -> dict[str, int]:
    rows = await db.fetch("SELECT status, count(*) AS n FROM feeds GROUP BY status")
    return {r["status"]: r["n"] for r in rows}


# --- feeds: scheduling ---------------------------------------------------------------------


async def count_due(db: Db) -> int:
    return await db.fetchval(
        "SELECT count(*) FROM feeds WHERE status <> 'disabled' AND next_due_at <= now()"
    )


async def seconds_until_next_due(db: Db) -> float | None:
    """Seconds until the next feed is due (<= 0: one is due now); None when none is pollable."""
    return await db.fetchval(
        "SELECT EXTRACT(EPOCH FROM min(next_due_at) - now())::float8 FROM feeds "
        "WHERE status <> 'disabled'"
    )


async def claim_due_feeds(db: Db, *, limit: int, lease_s: float) -> tuple[uuid.UUID, list[Feed]]:
    """Take up to ``limit`` due feeds for this caller alone, for ``lease_s`` seconds."""
    token = uuid.uuid4()
    rows = await db.fetch(
        f"""
        WITH due AS (
            SELECT id FROM feeds
            WHERE status <> 'disabled' AND next_due_at <= now()
            ORDER BY next_due_at
            LIMIT $1
            FOR UPDATE SKIP LOCKED
        )
        UPDATE feeds f
        SET next_due_at = now() + make_interval(secs => $2), lease_token = $3
        FROM due WHERE f.id = due.id
        RETURNING {", ".join("f." + c for c in FEED_COLUMNS.split(", "))}
        """,
        limit,
        float(lease_s),
        token,
    )
    return token, [Feed.from_row(r) for r in rows]


async def release_feeds(db: Db, lease_token: uuid.UUID, ids: Sequence[int]) -> None:
    """Hand claimed feeds back, due now (a poller that will not poll them this time)."""
    await db.execute(
        "UPDATE feeds SET next_due_at = now(), lease_token = NULL "
        "WHERE lease_token = $1 AND id = ANY($2::bigint[])",
        lease_token,
        list(ids),
    )


async def make_due(db: Db, url_or_id: str | int | None = None) -> int:
    """Make one feed (or all pollable feeds) due now; returns how many."""
    if url_or_id is None:
        status = await db.execute("UPDATE feeds SET next_due_at = now() WHERE status <> 'disabled'")
    else:
        where, value = _feed_ref(url_or_id)
        status = await db.execute(f"UPDATE feeds SET next_due_at = now() WHERE {where}", value)
    return int(status.split()[-1])


async def record_poll(
    conn: asyncpg.Connection,
    feed_id: int,
    lease_token: uuid.UUID | None,
    state: FeedState,
    *,
    http_status: int | None = None,
    etag: str | None = None,
    last_modified: str | None = None,
    body_hash: str | None = None,
    keep_validators: bool = False,
    title: str | None = None,
    site_url: str | None = None,
    language: str | None = None,
    new_articles: int = 0,
) -> bool:
    """Write a poll's outcome to the feed; False when the lease was lost to another poller
    (the claim ran out and someone else took the feed: their outcome wins)."""
    result = await conn.execute(
        """
        UPDATE feeds SET
            status = $3,
            next_due_at = now() + make_interval(secs => $4),
            last_fetched_at = now(),
            last_outcome = $5,
            last_http_status = $6,
            last_error = $7,
            consecutive_failures = $8,
            etag = CASE WHEN $16 THEN etag ELSE $9 END,
            last_modified = CASE WHEN $16 THEN last_modified ELSE $10 END,
            body_hash = CASE WHEN $16 THEN body_hash ELSE $11 END,
            title = COALESCE(title, $12),
            site_url = COALESCE($13, site_url),
            language = COALESCE($14, language),
            articles_total = articles_total + $15,
            last_success_at = CASE WHEN $17 THEN now() ELSE last_success_at END,
            lease_token = NULL
        WHERE id = $1 AND ($2::uuid IS NULL OR lease_token = $2::uuid)
        """,
        feed_id,
        lease_token,
        state.status,
        float(state.due_in_s),
        state.last_outcome,
        http_status,
        state.last_error,
        state.consecutive_failures,
        etag,
        last_modified,
        body_hash,
        title,
        site_url,
        language,
        new_articles,
        keep_validators,
        state.success,
    )
    return result.endswith(" 1")


# --- articles ------------------------------------------------------------------------------

_INSERT = """
INSERT INTO articles (feed_id, dedup_key, guid, url, title, author, text, language,
                      content_hash, published_at, source)
SELECT $1, t.* FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                           $7::text[], $8::text[], $9::text[], $10::timestamptz[], $11::text[])
     AS t(dedup_key, guid, url, title, author, text, language, content_hash, published_at,
          source)
ON CONFLICT (feed_id, dedup_key) DO NOTHING
RETURNING id, content_hash, text <> '' AS has_text
"""

_FIRSTS = """
INSERT INTO article_contents (content_hash, first_article_id)
SELECT h, i FROM unnest($1::text[], $2::bigint[]) AS t(h, i)
ON CONFLICT (content_hash) DO NOTHING
"""

_MARK = """
UPDATE articles a SET duplicate_of = c.first_article_id
FROM article_contents c
WHERE a.id = ANY($1::bigint[]) AND c.content_hash = a.content_hash
  AND c.first_article_id <> a.id
"""


async def store_articles(
    conn: asyncpg.Connection, feed_id: int, entries: Sequence[NormalizedEntry]
) -> StoreCounts:
    """Insert a feed's entries in one statement; mark copies of already stored text.

    Run it inside a transaction together with ``record_poll``: the feed's validators
    (ETag...) then only move on when its articles are stored.
    """
    if not entries:
        return StoreCounts()
    # One order for every writer (keys, then hashes) so concurrent batches that overlap
    # take their row locks in the same order and cannot deadlock.
    ordered = sorted(entries, key=lambda e: e.dedup_key)
    cols: list[list[Any]] = [[] for _ in range(10)]
    for e in ordered:
        a = e.article
        values = (
            e.dedup_key,
            a.guid,
            a.url,
            a.title,
            a.author,
            a.text,
            a.language,
            a.content_hash,
            a.published,
            a.source,
        )
        for col, value in zip(cols, values, strict=True):
            col.append(value)
    inserted = await conn.fetch(_INSERT, feed_id, *cols)
    counts = StoreCounts(new=len(inserted), duplicate=len(entries) - len(inserted))
    # Only articles with text take part: a bare title ("Live updates") is not a story's text.
    firsts = sorted((r["content_hash"], r["id"]) for r in inserted if r["has_text"])
    if firsts:
        hashes = [h for h, _ in firsts]
        ids = [i for _, i in firsts]
        await conn.execute(_FIRSTS, hashes, ids)
        marked = await conn.execute(_MARK, ids)
        counts.copies = int(marked.split()[-1])
    return counts
