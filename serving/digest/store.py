"""The SQL of the digest feeds (``/feeds/digest.*``) beside the ranking's own: a cheap
fingerprint of every story in a time window, from which the feeds' ETag is made before
anything is ranked or rendered (a conditional request that matches costs this one query), and
when each listed story last changed (its feed item's ``updated``).

A story's feed item is made of its row in ``stories``, its members (``story_articles`` and
``articles``) and their latest ``ok`` Results, so the fingerprint covers exactly those: how
many there are and the sum of their ids (a member or Result added, deleted or replaced changes
them, whatever the commit order) and their latest ``updated_at``. Articles are written once
(ingestion inserts, never updates), so their ids say enough.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

_FINGERPRINT = """
SELECT count(DISTINCT s.id) AS n_stories,
       count(*) AS n_members,
       COALESCE(sum(sa.article_id), 0) AS member_sum,
       max(s.updated_at) AS stories_at,
       count(r.id) AS n_results,
       COALESCE(sum(r.id), 0) AS result_sum,
       max(r.updated_at) AS results_at
FROM stories s
JOIN story_articles sa ON sa.story_id = s.id
LEFT JOIN results r ON r.article_id = sa.article_id AND r.status = 'ok'
WHERE s.last_published_at >= $1
"""

_UPDATED = """
SELECT s.id, GREATEST(s.updated_at, max(r.updated_at)) AS updated_at
FROM stories s
JOIN story_articles sa ON sa.story_id = s.id
LEFT JOIN results r ON r.article_id = sa.article_id AND r.status = 'ok'
WHERE s.id = ANY($1::bigint[])
GROUP BY s.id
"""


@dataclass(frozen=True)
class WindowFingerprint:
    """What the stories of a window are made of, in a few numbers; ``changed_at`` is the
    latest change to any of them (None: no story in the window)."""

    n_stories: int
    n_members: int
    member_sum: int
    n_results: int
    result_sum: int
    changed_at: datetime | None

    def key(self) -> str:
        at = self.changed_at.isoformat() if self.changed_at else "-"
        return (
            f"{self.n_stories}/{self.n_members}/{self.member_sum}/"
            f"{self.n_results}/{self.result_sum}/{at}"
        )


async def window_fingerprint(
    pool: asyncpg.Pool | asyncpg.Connection, since: datetime
) -> WindowFingerprint:
    """The fingerprint of the stories with an article at or after ``since``."""
    row = await pool.fetchrow(_FINGERPRINT, since)
    times = [t for t in (row["stories_at"], row["results_at"]) if t is not None]
    return WindowFingerprint(
        n_stories=int(row["n_stories"]),
        n_members=int(row["n_members"]),
        member_sum=int(row["member_sum"]),
        n_results=int(row["n_results"]),
        result_sum=int(row["result_sum"]),
        changed_at=max(times) if times else None,
    )


async def stories_updated(
    pool: asyncpg.Pool | asyncpg.Connection, story_ids: list[int]
) -> dict[int, datetime]:
    """When each story last changed: an article joined it (``stories.updated_at``) or one of
    its articles got a new summary (its Result's ``updated_at``)."""
    if not story_ids:
        return {}
    return {r["id"]: r["updated_at"] for r in await pool.fetch(_UPDATED, story_ids)}
