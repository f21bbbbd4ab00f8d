"""Which adapter a model profile serves: its latest promotion in the registry.

The registry's tables (``training_runs``, ``adapter_promotions``) are train's migration 004;
train writes them (``train.registry.promote``). Serving only *reads* the current promotion,
here, so that a Summarizer replica starts with it (``serving.deployments.summarizer``) without
importing train: the query and :class:`Promotion` live in this module and ``train.registry``
re-exports them (one definition, read by both layers). The read is plain SQL on the two
tables; a database without them (train's migration not applied) has no promotion.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg


@dataclass(frozen=True)
class Promotion:
    profile: str
    run_id: int | None
    run_name: str | None
    adapter_path: str | None
    promoted_at: datetime

    @property
    def adapter_id(self) -> str | None:
        """What the engine reports as ``adapter_id``: ``<run name>#<run id>``."""
        return f"{self.run_name}#{self.run_id}" if self.run_id is not None else None


PROMOTION_SQL = """
SELECT DISTINCT ON (p.profile) p.profile, p.run_id, p.promoted_at, r.name, r.adapter_path
FROM adapter_promotions p LEFT JOIN training_runs r ON r.id = p.run_id
WHERE ($1::text IS NULL OR p.profile = $1)
ORDER BY p.profile, p.id DESC
"""


def _promotion(row: asyncpg.Record) -> Promotion:
    return Promotion(
        row["profile"], row["run_id"], row["name"], row["adapter_path"], row["promoted_at"]
    )


async def current_promotions(conn: asyncpg.Connection | asyncpg.Pool) -> list[Promotion]:
    return [_promotion(r) for r in await conn.fetch(PROMOTION_SQL, None)]


async def promoted_adapter(
    conn: asyncpg.Connection | asyncpg.Pool, profile: str
) -> Promotion | None:
    """The profile's latest promotion (its ``adapter_path`` is None for the bare base), or
    None when nothing was ever promoted for it."""
    row = await conn.fetchrow(PROMOTION_SQL, profile)
    return _promotion(row) if row is not None else None


async def read_promotion(dsn: str, profile: str, timeout_s: float = 10.0) -> Promotion | None:
    """:func:`promoted_adapter` over a connection of its own (a replica holds no pool for it);
    None also when the registry's tables do not exist in that database."""
    conn = await asyncpg.connect(dsn, timeout=timeout_s)
    try:
        return await promoted_adapter(conn, profile)
    except asyncpg.UndefinedTableError:
        return None
    finally:
        await conn.close()
