"""The one way a stored article is read back: its columns, and the Article a row makes.

Ingestion writes ``articles``; serving, stories and training read it, each joining its own
tables (results, story_articles, feeds) around these columns. Every such query selects
:data:`ARTICLE_COLUMNS` from ``articles a`` and builds the Article with
:func:`article_from_row`, so a new article field is added here once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import asyncpg

from core.article import MAX_TITLE_CHARS, Article

ARTICLE_COLUMNS = (
    "a.id, a.feed_id, a.title, a.text, a.url, a.guid, a.source, a.author, a.published_at, "
    "a.language, a.duplicate_of"
)


Db = asyncpg.Pool | asyncpg.Connection


def article_from_row(row: Mapping[str, Any]) -> Article:
    return Article(
        id=row["id"],
        feed_id=row["feed_id"],
        # stored titles come from feeds: cut, never refused, at the Article's limit
        title=(row["title"] or "")[:MAX_TITLE_CHARS],
        text=row["text"] or "",
        url=row["url"],
        guid=row["guid"],
        source=row["source"],
        author=row["author"],
        published=row["published_at"],
        language=row["language"],
        duplicate_of=row["duplicate_of"],
    )


async def load_articles(
    db: Db,
    *,
    feed_id: int | None = None,
    ids: Iterable[int] | None = None,
    include_copies: bool = True,
    limit: int = 100,
) -> list[Article]:
    """Stored articles, newest first."""
    rows = await db.fetch(
        f"""
        SELECT {ARTICLE_COLUMNS}
        FROM articles a
        WHERE ($1::bigint IS NULL OR a.feed_id = $1)
          AND ($2::bigint[] IS NULL OR a.id = ANY($2::bigint[]))
          AND ($3 OR a.duplicate_of IS NULL)
        ORDER BY a.published_at DESC, a.id DESC
        LIMIT $4
        """,
        feed_id,
        list(ids) if ids is not None else None,
        include_copies,
        limit,
    )
    return [article_from_row(r) for r in rows]
