"""Real sample articles for tests and benchmarks, fetched at run time (never committed), and
the sample feeds built from them for the offline stack (``build_sample_feeds``).

The Lee background corpus (300 ABC news articles, one per line) ships inside gensim's wheel as
``gensim/test/test_data/lee_background.cor``. ``ensure_lee_corpus`` downloads that wheel once
with pip (``pip download --no-deps gensim==4.4.0``: no install), extracts the one file into
``STATE_DIR/sample-data/`` and returns its path; later calls just return the path.
:func:`outside_news` does the same for the English test articles in newspaper4k's source
package (real news from US, Korean and tech outlets, with the publishers' descriptions).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import xml.etree.ElementTree as ET
import zipfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

GENSIM_VERSION = "4.4.0"
MEMBER = "gensim/test/test_data/lee_background.cor"
FILENAME = "lee_background.cor"


def _fetch_once(state_dir: Path, filename: str, extract: Any, *pip_args: str) -> Path:
    """``STATE_DIR/sample-data/<filename>``: on first use, ``pip download`` the package named
    by ``pip_args`` into a temporary folder and write ``extract(folder)``'s bytes there (under a
    lock, atomically); later calls just return the path."""
    folder = Path(state_dir).expanduser() / "sample-data"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / filename
    if target.is_file():
        return target
    with open(folder / f".{filename}.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.is_file():
            return target
        with tempfile.TemporaryDirectory(dir=folder) as tmp:
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "download",
                    "--no-deps",
                    "--disable-pip-version-check",
                    "-q",
                    *pip_args,
                    "-d",
                    tmp,
                ],
                check=True,
                timeout=600,
            )
            data = extract(Path(tmp))
            partial = folder / f".{filename}.partial"
            partial.write_bytes(data)
            os.replace(partial, target)
    return target


def ensure_lee_corpus(state_dir: Path) -> Path:
    """Path of the Lee corpus under ``state_dir/sample-data``, fetching it on first use."""

    def extract(folder: Path) -> bytes:
        wheel = next(folder.glob("gensim-*.whl"))
        with zipfile.ZipFile(wheel) as archive:
            return archive.read(MEMBER)

    return _fetch_once(
        state_dir, FILENAME, extract, "--only-binary=:all:", f"gensim=={GENSIM_VERSION}"
    )


# Real news from outside the project: the English test articles of newspaper4k's source
# package (CNN, TIME, WIRED, Yonhap, FOX13, cleveland.com, ...), each with the text the
# package expects its extractor to find and the publisher's own description (its
# <meta name="description">), a human-written reference. Only 0.9.6's sdist carries them.
NEWSPAPER4K_VERSION = "0.9.6"
OUTSIDE_NEWS_FILE = f"newspaper4k-{NEWSPAPER4K_VERSION}-en.jsonl"


def outside_news(state_dir: Path) -> list[dict[str, Any]]:
    """The English articles of newspaper4k's test data as dicts: ``id``, ``title``, ``text``,
    ``source``, ``url`` and ``reference`` (the publisher's description, or None)."""

    def extract(folder: Path) -> bytes:
        root = f"newspaper4k-{NEWSPAPER4K_VERSION}/tests/data/"
        lines = []
        with tarfile.open(next(folder.glob("newspaper4k-*.tar.gz"))) as archive:
            names = set(archive.getnames())
            for name in sorted(names):
                if not (name.startswith(root + "metadata/") and name.endswith(".json")):
                    continue
                stem = name[len(root + "metadata/") : -len(".json")]
                text_name = f"{root}txt/{stem}.txt"
                member = archive.extractfile(name)
                meta = json.load(member) if member else {}
                # (video_article_01 has no language: a copy of cleveland.com1)
                if meta.get("language") != "en" or text_name not in names:
                    continue
                text_file = archive.extractfile(text_name)
                text = text_file.read().decode("utf-8").strip() if text_file else ""
                reference = " ".join((meta.get("meta_description") or "").split())
                record = {
                    "id": stem,
                    "title": meta.get("title") or "",
                    "text": text,
                    "source": meta.get("meta_site_name") or None,
                    "url": meta.get("url"),
                    "reference": reference or None,
                }
                lines.append(json.dumps(record, ensure_ascii=False))
        return ("\n".join(lines) + "\n").encode("utf-8")

    path = _fetch_once(
        state_dir,
        OUTSIDE_NEWS_FILE,
        extract,
        "--no-binary=:all:",
        f"newspaper4k=={NEWSPAPER4K_VERSION}",
    )
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def lee_articles(state_dir: Path, limit: int | None = None) -> list[str]:
    """The corpus' articles (non-empty lines), at most ``limit``."""
    lines = ensure_lee_corpus(state_dir).read_text(encoding="utf-8", errors="replace").splitlines()
    articles = [line.strip() for line in lines if line.strip()]
    return articles[:limit] if limit is not None else articles


# --- sample feeds (the offline stack's news) -------------------------------------------------
#
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
    rss = ET.Element("rss", version="2.0")
    channel = ET.SubElement(rss, "channel")
    ET.SubElement(channel, "title").text = name
    ET.SubElement(channel, "link").text = f"https://sample.newsdesk.invalid/{slug}/"
    ET.SubElement(
        channel, "description"
    ).text = f"{name}: a sample feed of Newsdesk, real ABC news text (the Lee corpus)"
    ET.SubElement(channel, "language").text = "en-au"
    ET.SubElement(channel, "lastBuildDate").text = format_datetime(built, usegmt=True)
    for item in sorted(items, key=lambda x: x.published, reverse=True):
        node = ET.SubElement(channel, "item")
        ET.SubElement(node, "title").text = item.title
        ET.SubElement(node, "guid", isPermaLink="false").text = f"newsdesk-sample:{item.guid}"
        ET.SubElement(node, "pubDate").text = format_datetime(item.published, usegmt=True)
        ET.SubElement(node, "description").text = item.text
    return ET.tostring(rss, encoding="utf-8", xml_declaration=True)


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

        from ingestion import db
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
