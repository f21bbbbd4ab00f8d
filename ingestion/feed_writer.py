"""Write RSS 2.0 and Atom 1.0 documents from items: the one feed writer of the project.

Ingestion owns the feed formats it reads (``ingestion/parser.py``), so the writer lives beside
the reader. Nothing in the ingestion service writes feeds; the sample feeds of the offline
stack (``cluster/sample_data.py``), the training articles' feeds (``train/sample_feeds.py``)
and the tests' feed server (``tests/support/feedserver.py``) do, all through this module. Pure: it
returns bytes and touches no files.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from xml.sax.saxutils import escape, quoteattr


@dataclass(frozen=True)
class FeedItem:
    """One item (RSS) or entry (Atom). A ``pub_date`` string is written as given (tests write
    malformed dates on purpose); a datetime is formatted as the format requires."""

    title: str
    link: str | None = None
    guid: str | None = None
    description: str | None = None  # the summary; HTML is escaped, not interpreted
    content: str | None = None  # the full HTML: RSS content:encoded, Atom content
    pub_date: datetime | str | None = None
    author: str | None = None


def _rfc822(value: datetime | str) -> str:
    return value if isinstance(value, str) else format_datetime(value, usegmt=True)


def _rfc3339(value: datetime | str) -> str:
    if isinstance(value, str):
        return value
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _cdata(text: str) -> str:
    # "]]>" would end the section early: split it across two sections
    return "<![CDATA[" + text.replace("]]>", "]]]]><![CDATA[>") + "]]>"


def rss_document(
    items: Iterable[FeedItem],
    *,
    title: str,
    link: str,
    description: str,
    language: str | None = None,
    last_build: datetime | None = None,
    encoding: str = "utf-8",
    declare_encoding: str | None = "utf-8",
) -> bytes:
    """An RSS 2.0 document, items in the order given, encoded with ``encoding``; the XML
    declaration names ``declare_encoding`` (None: no encoding named, so XML's default)."""
    parts = []
    for it in items:
        x = [f"<title>{escape(it.title)}</title>"]
        if it.link is not None:
            x.append(f"<link>{escape(it.link)}</link>")
        if it.guid is not None:
            x.append(f'<guid isPermaLink="false">{escape(it.guid)}</guid>')
        if it.description is not None:
            x.append(f"<description>{escape(it.description)}</description>")
        if it.content is not None:
            x.append(f"<content:encoded>{_cdata(it.content)}</content:encoded>")
        if it.pub_date is not None:
            x.append(f"<pubDate>{escape(_rfc822(it.pub_date))}</pubDate>")
        if it.author is not None:
            x.append(f"<author>{escape(it.author)}</author>")
        parts.append("<item>" + "".join(x) + "</item>")
    decl = (
        f'<?xml version="1.0" encoding="{declare_encoding}"?>'
        if declare_encoding
        else '<?xml version="1.0"?>'
    )
    channel = [
        f"<title>{escape(title)}</title>",
        f"<link>{escape(link)}</link>",
        f"<description>{escape(description)}</description>",
    ]
    if language:
        channel.append(f"<language>{escape(language)}</language>")
    if last_build is not None:
        channel.append(f"<lastBuildDate>{_rfc822(last_build)}</lastBuildDate>")
    doc = (
        f"{decl}\n"
        '<rss version="2.0" xmlns:content="http://purl.org/rss/1.0/modules/content/">'
        "<channel>" + "".join(channel) + "".join(parts) + "</channel></rss>\n"
    )
    return doc.encode(encoding)


def atom_document(
    items: Iterable[FeedItem],
    *,
    title: str,
    feed_id: str,
    updated: datetime,
    language: str | None = None,
) -> bytes:
    """An Atom 1.0 feed (UTF-8). An entry's id is its guid, else its link, else its title; its
    ``updated`` is its pub_date, else the feed's ``updated``."""
    parts = []
    for it in items:
        x = [f"<title>{escape(it.title)}</title>"]
        if it.link is not None:
            x.append(f'<link rel="alternate" href={quoteattr(it.link)}/>')
        x.append(f"<id>{escape(it.guid or it.link or it.title)}</id>")
        x.append(f"<updated>{escape(_rfc3339(it.pub_date or updated))}</updated>")
        if it.description is not None:
            x.append(f'<summary type="html">{escape(it.description)}</summary>')
        if it.content is not None:
            x.append(f'<content type="html">{escape(it.content)}</content>')
        if it.author is not None:
            x.append(f"<author><name>{escape(it.author)}</name></author>")
        parts.append("<entry>" + "".join(x) + "</entry>")
    lang = f" xml:lang={quoteattr(language)}" if language else ""
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n'
        f'<feed xmlns="http://www.w3.org/2005/Atom"{lang}>'
        f"<title>{escape(title)}</title><id>{escape(feed_id)}</id>"
        f"<updated>{_rfc3339(updated)}</updated>" + "".join(parts) + "</feed>\n"
    ).encode()
