"""Sample RSS feeds from real article text, ingested through the real ingestion path.

``write_lee_feeds`` turns the Lee corpus (300 ABC news articles, fetched at run time by
:mod:`train.corpus`, never committed) into RSS 2.0 files (:mod:`ingestion.feed_writer`), one
item per article: a headline made from the article's first words, the text as the description,
a stable guid and an hourly publication date. ``ingest_files`` subscribes to them as
``file://`` feeds and polls them once with :func:`ingestion.poll_loop.poll_once`, so the articles
reach PostgreSQL exactly as fetched feeds do (parse, normalize, dedup, store).

    python -m train.sample_feeds            # feeds under STATE_DIR/sample-data/feeds, ingested
"""

from __future__ import annotations

import argparse
import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from ingestion.feed_writer import FeedItem, rss_document
from train.corpus import headline, lee_articles
from train.settings import TrainSettings

FEED_START = datetime(2001, 12, 20, 6, 0, tzinfo=UTC)  # the corpus is ABC news of that time


def write_lee_feeds(
    state_dir: Path, out_dir: Path | None = None, *, feeds: int = 3, limit: int | None = None
) -> list[Path]:
    """RSS files holding the Lee corpus' articles, split round-robin over ``feeds`` files."""
    texts = lee_articles(state_dir, limit)
    out_dir = Path(out_dir or Path(state_dir) / "sample-data" / "feeds")
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for f in range(feeds):
        items = [
            FeedItem(
                title=headline(text, 10, mark_cut=True),
                link=f"https://www.abc.net.au/news/sample/lee-{i:03d}",
                guid=f"lee-background-{i:03d}",
                description=text,
                pub_date=FEED_START + timedelta(hours=i),
            )
            for i, text in enumerate(texts)
            if i % feeds == f
        ]
        path = out_dir / f"abc-sample-{f + 1}.xml"
        tmp = path.with_suffix(".tmp")
        title = f"ABC News (sample {f + 1})"
        tmp.write_bytes(
            rss_document(
                items,
                title=title,
                link="https://www.abc.net.au/news/",
                description=title,
                language="en-au",
            )
        )
        tmp.replace(path)
        paths.append(path)
    return paths


async def ingest_files(settings: TrainSettings, paths: list[Path]) -> dict[str, Any]:
    """Subscribe to ``paths`` as file:// feeds, poll them once; counts of what was stored."""
    from core import db
    from ingestion import store
    from ingestion.poll_loop import poll_once

    pool = await db.create_pool(settings)
    try:
        for path in paths:
            # Straight to the store, not ingestion.subscriptions.subscribe: these are our own
            # file:// feeds written just above, taken whatever NEWSDESK_ALLOW_FILE_URLS says
            # (the URL guard is for feeds users add).
            await store.add_feed(pool, path.resolve().as_uri(), title=None)
            await store.make_due(pool, path.resolve().as_uri())
        summary = await poll_once(pool, settings)
        stored = await pool.fetchval("SELECT count(*) FROM articles")
    finally:
        await pool.close()
    return {"feeds": len(paths), "poll": summary.as_dict(), "articles_in_db": stored}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.sample_feeds", description=__doc__)
    parser.add_argument("--feeds", type=int, default=3)
    parser.add_argument("--limit", type=int, help="at most this many articles")
    parser.add_argument("--no-ingest", action="store_true", help="only write the RSS files")
    args = parser.parse_args(argv)
    settings = TrainSettings()
    paths = write_lee_feeds(settings.resolved_state_dir(), feeds=args.feeds, limit=args.limit)
    print("\n".join(str(p) for p in paths))
    if not args.no_ingest:
        print(json.dumps(asyncio.run(ingest_files(settings, paths)), indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
