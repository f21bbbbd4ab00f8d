"""The sample feeds of the offline stack (``build_sample_feeds``) and the stack component that
subscribes to them (``SampleFeedsComponent``, part of ``newsdesk up``).

Their text is the Lee corpus (real ABC news, fetched at run time by :mod:`train.corpus`, never
committed); the files are RSS 2.0 written by :mod:`ingestion.feed_writer`.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from ingestion.feed_writer import FeedItem, rss_document
from train.corpus import lee_articles

log = logging.getLogger(__name__)

# Four made-up outlets publish the Lee articles as RSS 2.0 files under STATE_DIR/sample-feeds/,
# subscribed through file:// URLs. Every article has one outlet; every 5th is also carried by
# the next outlet, alternately word for word (ingestion marks it a duplicate) and lightly
# edited (another headline, a sentence fewer, "said" -> "says": only the embeddings can tell
# it is the same story); every 15th by a third outlet too, edited another way. Publication
# times are spread over the 24 hours before the build, so the last 24 h have news to show.

SAMPLE_SOURCES: tuple[tuple[str, str], ...] = (
    ("harbour-herald", "Harbour Herald"),
    ("capital-wire", "Capital Wire"),
    ("southern-cross-times", "Southern Cross Times"),
    ("outback-bulletin", "Outback Bulletin"),
)
SAMPLE_FEEDS_DIR = "sample-feeds"
SAMPLE_SPAN = timedelta(hours=24)
MAX_TITLE_CHARS = 160


def first_sentence(text: str) -> str:
    """The first sentence of ``text`` (its headline here), at most MAX_TITLE_CHARS long."""
    match = re.match(r"(.+?[.!?])(?:\s|$)", text)
    sentence = (match.group(1) if match else text).strip()
    if len(sentence) > MAX_TITLE_CHARS:
        cut = sentence[:MAX_TITLE_CHARS].rsplit(" ", 1)[0]
        sentence = cut.rstrip(",;:") + "..."
    return sentence


def lightly_edited(text: str, variant: int = 1) -> str:
    """Another outlet's take on ``text``: variant 1 drops the last sentence and says "says" for
    "said"; variant 2 drops the last two sentences, reports the speech in the present perfect
    ("has said") and changes the first "has" to "had"."""
    sentences = re.split(r"(?<=[.!?])\s+", text.strip())
    keep = len(sentences) - variant if len(sentences) > 2 + variant else len(sentences)
    edited = " ".join(sentences[:keep])
    if variant == 1:
        return re.sub(r"\bsaid\b", "says", edited)
    edited = re.sub(r"\bsays\b", "has said", edited)
    return re.sub(r"\bhas\b", "had", edited, count=1)


@dataclass(frozen=True)
class SampleItem:
    guid: str
    title: str
    text: str
    published: datetime
    source_index: int


def sample_items(articles: list[str], now: datetime) -> list[SampleItem]:
    """Every item of every sample feed (see above), newest first."""
    unique = list(dict.fromkeys(a.strip() for a in articles if a.strip()))
    step = SAMPLE_SPAN / max(1, len(unique))
    items: list[SampleItem] = []
    n = len(SAMPLE_SOURCES)
    for i, text in enumerate(unique):
        published = now - step * (i + 0.5)
        items.append(SampleItem(f"lee-{i:03d}", first_sentence(text), text, published, i % n))
        copies = []  # (outlet, edit variant; 0 = word for word)
        if i % 5 == 0:
            copies.append(((i + 1) % n, (i // 5) % 2))
        if i % 15 == 0:
            copies.append(((i + 2) % n, 2))
        for k, (source, variant) in enumerate(copies, start=1):
            body = lightly_edited(text, variant) if variant else text
            title = first_sentence(body)
            if variant == 2:
                title = f"Update: {title}"
            later = min(now, published + timedelta(minutes=20 * k))
            items.append(SampleItem(f"lee-{i:03d}-{k}", title, body, later, source))
    return items


def _rss(slug: str, name: str, items: list[SampleItem], built: datetime) -> bytes:
    newest_first = sorted(items, key=lambda x: x.published, reverse=True)
    return rss_document(
        [
            FeedItem(
                title=item.title,
                guid=f"newsdesk-sample:{item.guid}",
                description=item.text,
                pub_date=item.published,
            )
            for item in newest_first
        ],
        title=name,
        link=f"https://sample.newsdesk.invalid/{slug}/",
        description=f"{name}: a sample feed of Newsdesk, real ABC news text (the Lee corpus)",
        language="en-au",
        last_build=built,
    )


def build_sample_feeds(
    state_dir: Path, now: datetime | None = None, limit: int | None = None
) -> list[Path]:
    """Write the sample feeds under ``state_dir/sample-feeds/`` (one RSS 2.0 file per outlet,
    rewritten with fresh dates on every call) from the first ``limit`` Lee articles (default:
    all 300) and return their paths."""
    now = (now or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)
    articles = lee_articles(state_dir, limit)
    items = sample_items(articles, now)
    folder = Path(state_dir).expanduser() / SAMPLE_FEEDS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, (slug, name) in enumerate(SAMPLE_SOURCES):
        mine = [item for item in items if item.source_index == index]
        path = folder / f"{slug}.xml"
        partial = folder / f".{slug}.xml.partial"
        partial.write_bytes(_rss(slug, name, mine, now))
        os.replace(partial, path)  # a poller never reads a half-written feed
        paths.append(path)
    return paths


class SampleFeedsComponent:
    """`newsdesk up`: subscribes to the sample feeds (``NEWSDESK_SAMPLE_FEEDS``, default on),
    rebuilt with fresh dates at each start. Without the corpus (no package index) the stack
    starts anyway, without them."""

    name = "sample feeds"

    def __init__(self) -> None:
        self.text = "off (NEWSDESK_SAMPLE_FEEDS=false)"

    def start(self, ctx: Any) -> None:
        import asyncio

        from core import db
        from ingestion.feedlist import FeedSpec, add_feeds

        s = ctx.settings
        if not s.sample_feeds:
            return
        try:
            paths = build_sample_feeds(s.resolved_state_dir())
        except (OSError, subprocess.SubprocessError) as exc:
            log.warning("sample feeds not built: %s", exc)
            self.text = f"not built ({exc})"
            return
        specs = [
            FeedSpec(url=p.as_uri(), title=name)
            for p, (_, name) in zip(paths, SAMPLE_SOURCES, strict=True)
        ]

        async def go():  # type: ignore[no-untyped-def]
            pool = await db.create_pool(s)
            try:
                return await add_feeds(pool, specs, s)
            finally:
                await pool.close()

        report = asyncio.run(go())
        refused = f", refused: {report.refused}" if report.refused else ""
        self.text = (
            f"{len(paths)} sample feeds in {paths[0].parent}: {len(report.added)} new, "
            f"{len(report.existing)} already subscribed{refused}"
        )

    def stop(self, ctx: Any) -> None:
        pass

    def describe(self, ctx: Any) -> str:
        return self.text
