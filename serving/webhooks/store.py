"""All SQL of webhooks (migration 006): subscriptions, the outbox ``webhook_events`` and the
delivery log ``webhook_deliveries``. The matcher writes events on the connection of the
transaction that changed the story; the dispatcher claims due events with ``FOR UPDATE SKIP
LOCKED`` (so several dispatchers never send the same row at once) and settles each attempt
together with its log row (one statement)."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from serving.webhooks.schemas import (
    Delivery,
    DeliveryAttempt,
    DeliveryState,
    Webhook,
    WebhookCreate,
    WebhookCreated,
)

Db = asyncpg.Pool | asyncpg.Connection
NOTIFY_CHANNEL = "newsdesk_webhook_events"  # a committed event wakes the dispatchers

# --- subscriptions --------------------------------------------------------------------------

_COLUMNS = (
    "w.id, w.url, w.description, w.min_importance, w.topics, w.sources, w.growth_metric, "
    "w.growth_step, w.created_at"
)
_COUNTS = """
LEFT JOIN LATERAL (
    SELECT count(*) FILTER (WHERE e.state = 'pending') AS pending,
           count(*) FILTER (WHERE e.state = 'delivered') AS delivered,
           count(*) FILTER (WHERE e.state = 'given_up') AS given_up
    FROM webhook_events e WHERE e.webhook_id = w.id
) c ON true
"""


def _webhook(row: asyncpg.Record) -> Webhook:
    return Webhook.model_validate(dict(row))


async def create_webhook(db: Db, request: WebhookCreate) -> WebhookCreated:
    """Insert a subscription whose secret and growth step are already decided."""
    assert request.secret and request.growth_step
    row = await db.fetchrow(
        f"""
        INSERT INTO webhooks AS w (url, secret, description, min_importance, topics, sources,
                                   growth_metric, growth_step)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
        RETURNING {_COLUMNS}, w.secret
        """,
        request.url.strip(),
        request.secret,
        request.description,
        request.min_importance,
        request.topics,
        request.sources,
        request.growth_metric,
        request.growth_step,
    )
    return WebhookCreated.model_validate(dict(row))


async def list_webhooks(db: Db) -> list[Webhook]:
    rows = await db.fetch(f"SELECT {_COLUMNS}, c.* FROM webhooks w {_COUNTS} ORDER BY w.id")
    return [_webhook(r) for r in rows]


async def get_webhook(db: Db, webhook_id: int) -> Webhook | None:
    row = await db.fetchrow(
        f"SELECT {_COLUMNS}, c.* FROM webhooks w {_COUNTS} WHERE w.id = $1", webhook_id
    )
    return _webhook(row) if row else None


async def delete_webhook(db: Db, webhook_id: int) -> bool:
    """Delete a subscription with its events and log; False when there was none."""
    status = await db.execute("DELETE FROM webhooks WHERE id = $1", webhook_id)
    return status.endswith(" 1")


async def list_deliveries(
    db: Db, webhook_id: int, *, state: DeliveryState | None = None, limit: int = 50
) -> list[Delivery]:
    """This webhook's events, newest first, each with its attempts in order."""
    rows = await db.fetch(
        """
        SELECT e.*, COALESCE(
            (SELECT json_agg(json_build_object(
                        'attempt', d.attempt, 'status_code', d.status_code, 'error', d.error,
                        'outcome', d.outcome, 'started_at', d.started_at,
                        'duration_ms', d.duration_ms) ORDER BY d.attempt, d.id)
             FROM webhook_deliveries d WHERE d.event_row = e.id), '[]') AS log
        FROM webhook_events e
        WHERE e.webhook_id = $1 AND ($2::text IS NULL OR e.state = $2)
        ORDER BY e.created_at DESC, e.id DESC
        LIMIT $3
        """,
        webhook_id,
        state,
        limit,
    )
    deliveries = []
    for r in rows:
        deliveries.append(
            Delivery(
                event_id=r["event_id"],
                kind=r["kind"],
                story_id=r["story_id"],
                state=r["state"],
                attempts=r["attempts"],
                last_status_code=r["last_status_code"],
                last_error=r["last_error"],
                created_at=r["created_at"],
                next_attempt_at=r["next_attempt_at"] if r["state"] == "pending" else None,
                delivered_at=r["delivered_at"],
                given_up_at=r["given_up_at"],
                log=[DeliveryAttempt.model_validate(a) for a in json.loads(r["log"])],
            )
        )
    return deliveries


# --- matching -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rule:
    """A subscription as the matcher reads it."""

    id: int
    min_importance: float | None
    topics: frozenset[str]  # lower case
    sources: frozenset[str]  # lower case
    growth_metric: str
    growth_step: int


async def match_rules(conn: asyncpg.Connection) -> list[Rule]:
    rows = await conn.fetch(
        "SELECT id, min_importance, topics, sources, growth_metric, growth_step FROM webhooks"
    )
    return [
        Rule(
            id=r["id"],
            min_importance=r["min_importance"],
            topics=frozenset(t.lower() for t in r["topics"]),
            sources=frozenset(s.lower() for s in r["sources"]),
            growth_metric=r["growth_metric"],
            growth_step=r["growth_step"],
        )
        for r in rows
    ]


async def last_sizes(
    conn: asyncpg.Connection, webhook_ids: list[int], story_ids: list[int]
) -> dict[tuple[int, int], int]:
    """(webhook, story) -> the growth metric at the latest event enqueued for them."""
    rows = await conn.fetch(
        "SELECT webhook_id, story_id, max(size) AS size FROM webhook_events "
        "WHERE webhook_id = ANY($1::bigint[]) AND story_id = ANY($2::bigint[]) "
        "GROUP BY webhook_id, story_id",
        webhook_ids,
        story_ids,
    )
    return {(r["webhook_id"], r["story_id"]): r["size"] for r in rows}


@dataclass(frozen=True, slots=True)
class NewEvent:
    event_id: str
    webhook_id: int
    story_id: int
    kind: str
    level: int
    size: int
    body: str
    created_at: datetime


async def insert_events(conn: asyncpg.Connection, events: list[NewEvent]) -> int:
    """Enqueue ``events`` (one already enqueued under the same key is left alone) and wake
    the dispatchers when the transaction commits; the number enqueued."""
    if not events:
        return 0
    rows = await conn.fetch(
        """
        INSERT INTO webhook_events (event_id, webhook_id, story_id, kind, level, size, body,
                                    created_at, next_attempt_at)
        SELECT t.event_id, t.webhook_id, t.story_id, t.kind, t.level, t.size, t.body,
               t.created, t.created
        FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::text[],
                                        $5::int[], $6::int[], $7::text[], $8::timestamptz[])
            AS t(event_id, webhook_id, story_id, kind, level, size, body, created)
        ON CONFLICT (webhook_id, story_id, kind, level) DO NOTHING
        RETURNING id
        """,
        [e.event_id for e in events],
        [e.webhook_id for e in events],
        [e.story_id for e in events],
        [e.kind for e in events],
        [e.level for e in events],
        [e.size for e in events],
        [e.body for e in events],
        [e.created_at for e in events],
    )
    if rows:
        await conn.execute("SELECT pg_notify($1, '')", NOTIFY_CHANNEL)
    return len(rows)


async def story_of(conn: asyncpg.Connection, article_id: int) -> int | None:
    return await conn.fetchval(
        "SELECT story_id FROM story_articles WHERE article_id = $1", article_id
    )


# --- dispatching ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Claimed:
    """A due event claimed by one dispatcher, with what it takes to send it."""

    row: int
    event_id: str
    kind: str
    body: str
    attempts: int  # before this one
    url: str
    secret: str
    claim: uuid.UUID


async def claim_due(pool: Db, *, limit: int, lease_s: float) -> list[Claimed]:
    """Claim up to ``limit`` due events: each becomes due again ``lease_s`` from now (if its
    dispatcher dies, another sends it then) and only this claim may settle it."""
    claim = uuid.uuid4()
    rows = await pool.fetch(
        """
        WITH due AS (
            SELECT id FROM webhook_events
            WHERE state = 'pending' AND next_attempt_at <= now()
            ORDER BY next_attempt_at, id
            LIMIT $1
            FOR UPDATE SKIP LOCKED
        )
        UPDATE webhook_events e
        SET next_attempt_at = now() + make_interval(secs => $2), claim = $3
        FROM due, webhooks w
        WHERE e.id = due.id AND w.id = e.webhook_id
        RETURNING e.id, e.event_id, e.kind, e.body, e.attempts, w.url, w.secret
        """,
        limit,
        lease_s,
        claim,
    )
    return [
        Claimed(
            row=r["id"],
            event_id=r["event_id"],
            kind=r["kind"],
            body=r["body"],
            attempts=r["attempts"],
            url=r["url"],
            secret=r["secret"],
            claim=claim,
        )
        for r in rows
    ]


@dataclass(frozen=True, slots=True)
class Attempt:
    """One delivery attempt's answer, as the dispatcher settles it."""

    outcome: str  # delivered | retry | given_up
    status_code: int | None
    error: str | None
    started_at: datetime
    duration_ms: float
    retry_in_s: float = 0.0


_SETTLE = """
WITH settled AS (
    UPDATE webhook_events
    SET attempts = attempts + 1, state = $3, last_status_code = $4, last_error = $5,
        next_attempt_at = now() + make_interval(secs => $6), claim = NULL,
        delivered_at = CASE WHEN $3 = 'delivered' THEN now() END,
        given_up_at = CASE WHEN $3 = 'given_up' THEN now() END
    WHERE id = $1 AND claim = $2 AND state = 'pending'
    RETURNING id, attempts
)
INSERT INTO webhook_deliveries (event_row, attempt, status_code, error, outcome, started_at,
                                duration_ms)
SELECT id, attempts, $4, $5, $7, $8, $9 FROM settled
RETURNING attempt
"""


async def settle(pool: Db, event: Claimed, attempt: Attempt) -> bool:
    """Record ``attempt`` on the event and in the log (one statement, so both or neither);
    False (nothing written) when the claim was lost: its lease passed and another dispatcher
    claimed it."""
    state = {"delivered": "delivered", "retry": "pending", "given_up": "given_up"}[attempt.outcome]
    number = await pool.fetchval(
        _SETTLE,
        event.row,
        event.claim,
        state,
        attempt.status_code,
        attempt.error,
        attempt.retry_in_s,
        attempt.outcome,
        attempt.started_at,
        attempt.duration_ms,
    )
    return number is not None


async def prune(pool: Db, *, older_than_s: float) -> int:
    """Delete settled events (delivered, given up) created more than ``older_than_s`` ago,
    with their log; the number deleted. Pending events stay, however old, and so does the
    latest event of a (webhook, story) whose story had an article within that time: the
    growth rule counts from it."""
    status = await pool.execute(
        """
        DELETE FROM webhook_events e
        WHERE e.state <> 'pending' AND e.created_at < now() - make_interval(secs => $1)
          AND (EXISTS (SELECT 1 FROM webhook_events n
                       WHERE n.webhook_id = e.webhook_id AND n.story_id = e.story_id
                         AND n.size > e.size)
               OR NOT EXISTS (SELECT 1 FROM stories s
                              WHERE s.id = e.story_id
                                AND s.last_published_at >= now() - make_interval(secs => $1)))
        """,
        older_than_s,
    )
    return int(status.split()[-1])


async def backlog(pool: Db) -> dict[str, int]:
    """Events by state, for the dispatcher's status."""
    rows = await pool.fetch("SELECT state, count(*) AS n FROM webhook_events GROUP BY state")
    return {r["state"]: r["n"] for r in rows}
