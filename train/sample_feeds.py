"""Sample RSS feeds from real article text, ingested through the real ingestion path.

``write_lee_feeds`` turns the Lee corpus (300 ABC news articles, fetched at run time by
:func:`cluster.sample_data.ensure_lee_corpus`, never committed) into RSS 2.0 files, one item
per article: a headline made from the article's first words, the text as the description, a
stable guid and an hourly publication date. ``ingest_files`` subscribes to them as
``file://`` feeds and polls them once with :func:`ingestion.poller.poll_once`, so the articles
reach PostgreSQL exactly as fetched feeds do (parse, normalize, dedup, store).

    python -m train.sample_feeds            # feeds under STATE_DIR/sample-data/feeds, ingested
"""

from __future__ import annotations

import argparse
import asyncio
import json
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from ingestion.settings import Settings

FEED_START = datetime(2001, 12, 20, 6, 0, tzinfo=UTC)  # the corpus is ABC news of that time


def headline(text: str, words: int = 10) -> str:
    """A headline-like title: the first sentence's first ``words`` words."""
    first = text.split(". ")[0]
    tokens = first.split()
    title = " ".join(tokens[:words]).rstrip(",;:")
    return title + ("..." if len(tokens) > words else "")


def rss(items: list[dict[str, Any]], *, title: str, link: str) -> bytes:
    parts = []
    for it in items:
        parts.append(
            "<item>"
            f"<title>{escape(it['title'])}</title>"
            f"<link>{escape(it['link'])}</link>"
            f'<guid isPermaLink="false">{escape(it["guid"])}</guid>'
            f"<pubDate>{format_datetime(it['published'], usegmt=True)}</pubDate>"
            f"<description>{escape(it['text'])}</description>"
            "</item>"
        )
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n<rss version="2.0"><channel>'
        f"<title>{escape(title)}</title><link>{escape(link)}</link><language>en-au</language>"
        f"<description>{escape(title)}</description>{''.join(parts)}</channel></rss>\n"
    ).encode()


def write_lee_feeds(
    state_dir: Path, out_dir: Path | None = None, *, feeds: int = 3, limit: int | None = None
) -> list[Path]:
    """RSS files holding the Lee corpus' articles, split round-robin over ``feeds`` files."""
    from cluster.sample_data import lee_articles

    texts = lee_articles(state_dir, limit)
    out_dir = Path(out_dir or Path(state_dir) / "sample-data" / "feeds")
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for f in range(feeds):
        items = [
            {
                "title": headline(text),
                "text": text,
                "guid": f"lee-background-{i:03d}",
                "link": f"https://www.abc.net.au/news/sample/lee-{i:03d}",
                "published": FEED_START + timedelta(hours=i),
            }
            for i, text in enumerate(texts)
            if i % feeds == f
        ]
        path = out_dir / f"abc-sample-{f + 1}.xml"
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(
            rss(items, title=f"ABC News (sample {f + 1})", link="https://www.abc.net.au/news/")
        )
        tmp.replace(path)
        paths.append(path)
    return paths


async def ingest_files(settings: Settings, paths: list[Path]) -> dict[str, Any]:
    """Subscribe to ``paths`` as file:// feeds, poll them once; counts of what was stored."""
    from ingestion import db, store
    from ingestion.poller import poll_once

    pool = await db.create_pool(settings)
    try:
        for path in paths:
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
    settings = Settings()
    paths = write_lee_feeds(settings.resolved_state_dir(), feeds=args.feeds, limit=args.limit)
    print("\n".join(str(p) for p in paths))
    if not args.no_ingest:
        print(json.dumps(asyncio.run(ingest_files(settings, paths)), indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
