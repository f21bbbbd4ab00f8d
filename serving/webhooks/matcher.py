"""Stories -> webhook events, written into the outbox inside the transaction that changed the
story, so an event exists if and only if the change committed (no event lost to a crash
between the two, none for a change rolled back).

Two changes can make a story match or grow, and both call in here before they commit:
- an assignment round adds articles to stories (:class:`serving.stories.worker.StoryAssigner`
  -> :func:`enqueue_for_stories`);
- a Result is stored for an article (:meth:`serving.summaries.result_store.ResultStore.save` ->
  :func:`enqueue_for_article`): a story matches only once its articles have Results.

Both take one transaction-scoped advisory lock before they read the story, so of two
concurrent changes to the same story the second reads after the first committed (an article
assigned in one transaction while its Result is stored in another cannot leave both blind).
Each (webhook, story, kind, level) is enqueued at most once (a unique key), so running the
matcher again over the same state enqueues nothing.

Rules: a story matches a webhook when one of its articles has a Result and the filter holds
(as in ``GET /v1/stories``: the most important article's importance, any article's topic or
source, case-insensitive). The first event of a (webhook, story) is ``story.matched``; then
``story.grew`` each time the growth metric (articles or distinct sources) reaches the
webhook's step more than at its previous event. A webhook hears about stories that change
after it was created; with no webhook at all the matcher costs one small query.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg

from serving.stories.store import story_members
from serving.webhooks import store
from serving.webhooks.schemas import (
    EVENT_ARTICLES,
    EventArticle,
    EventStory,
    Growth,
    WebhookEvent,
)

MATCH_LOCK_KEY = 7_231_060  # advisory-lock id of matching (006: webhooks; 7_231_006 = migrations)


@dataclass(frozen=True, slots=True)
class StoryState:
    """What the rules read of a story, and the story part of its events."""

    event: EventStory
    topics: frozenset[str]  # lower case
    sources: frozenset[str]  # lower case

    def size(self, metric: str) -> int:
        return self.event.n_sources if metric == "sources" else self.event.n_articles


def story_states(members: Iterable[asyncpg.Record]) -> dict[int, StoryState]:
    """Stories (with at least one summarized article) from their members' rows, as
    :func:`serving.stories.store.story_members` returns them (most important first)."""
    by_story: dict[int, list[asyncpg.Record]] = {}
    for m in members:
        by_story.setdefault(m["story_id"], []).append(m)
    states = {}
    for story_id, rows in by_story.items():
        scored = [r["importance"] for r in rows if r["importance"] is not None]
        if not scored:
            continue  # no Result yet: it cannot match
        topics = sorted({t for r in rows for t in (r["topics"] or [])})
        sources = sorted({r["source"] for r in rows if r["source"]})
        published = [r["published_at"] for r in rows if r["published_at"] is not None]
        event = EventStory(
            id=story_id,
            importance=round(max(scored), 2),
            n_articles=len(rows),
            n_sources=len({r["source"] or f"feed {r['feed_id']}" for r in rows}),
            topics=topics,
            sources=sources,
            first_published=min(published, default=None),
            last_published=max(published, default=None),
            articles=[
                EventArticle(
                    id=r["id"],
                    title=r["title"],
                    url=r["url"],
                    source=r["source"],
                    published=r["published_at"],
                    summary=r["summary"],
                    importance=r["importance"],
                    topics=list(r["topics"] or []),
                )
                for r in rows[:EVENT_ARTICLES]
            ],
        )
        states[story_id] = StoryState(
            event=event,
            topics=frozenset(t.lower() for t in topics),
            sources=frozenset(s.lower() for s in sources),
        )
    return states


def matches(rule: store.Rule, story: StoryState) -> bool:
    if rule.min_importance is not None and story.event.importance < rule.min_importance:
        return False
    if rule.topics and not rule.topics & story.topics:
        return False
    return not (rule.sources and not rule.sources & story.sources)


def decide(rule: store.Rule, story: StoryState, last_size: int | None) -> tuple[str, int] | None:
    """(kind, level) of the event ``story`` now owes ``rule``'s webhook, or None."""
    if not matches(rule, story):
        return None
    size = story.size(rule.growth_metric)
    if last_size is None:
        return "story.matched", 0
    if size >= last_size + rule.growth_step:
        return "story.grew", size
    return None


async def enqueue_for_stories(conn: asyncpg.Connection, story_ids: Iterable[int]) -> int:
    """Enqueue the events these stories owe; must run inside the transaction that changed
    them. The number of events enqueued."""
    ids = sorted(set(story_ids))
    rules = await _locked_rules(conn) if ids else []
    return await _enqueue(conn, rules, ids) if rules else 0


async def enqueue_for_article(conn: asyncpg.Connection, article_id: int) -> int:
    """Enqueue what the story of ``article_id`` owes after its Result was stored (nothing
    while it has no story: the assignment round enqueues then)."""
    rules = await _locked_rules(conn)
    if not rules:
        return 0
    story_id = await store.story_of(conn, article_id)  # read after the lock: see module doc
    return await _enqueue(conn, rules, [story_id]) if story_id is not None else 0


async def _locked_rules(conn: asyncpg.Connection) -> list[store.Rule]:
    """The webhooks' rules, with the matching lock taken when there are any (held until the
    transaction ends)."""
    if not conn.is_in_transaction():
        raise RuntimeError("the matcher must run inside the changing transaction")
    rules = await store.match_rules(conn)
    if rules:
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MATCH_LOCK_KEY)
    return rules


async def _enqueue(conn: asyncpg.Connection, rules: list[store.Rule], ids: list[int]) -> int:
    states = story_states(await story_members(conn, ids))
    if not states:
        return 0
    last = await store.last_sizes(conn, [r.id for r in rules], list(states))
    now = datetime.now(UTC)
    events = []
    for story_id, state in states.items():
        for rule in rules:
            previous = last.get((rule.id, story_id))
            decided = decide(rule, state, previous)
            if decided is None:
                continue
            kind, level = decided
            size = state.size(rule.growth_metric)
            event = WebhookEvent(
                id=f"evt_{uuid.uuid4().hex}",
                type=kind,  # type: ignore[arg-type]
                created_at=now,
                webhook_id=rule.id,
                story=state.event,
                growth=(
                    Growth(metric=rule.growth_metric, previous=previous, current=size)  # type: ignore[arg-type]
                    if kind == "story.grew" and previous is not None
                    else None
                ),
            )
            events.append(
                store.NewEvent(
                    event_id=event.id,
                    webhook_id=rule.id,
                    story_id=story_id,
                    kind=kind,
                    level=level,
                    size=size,
                    body=event.model_dump_json(),
                    created_at=now,
                )
            )
    return await store.insert_events(conn, events)
