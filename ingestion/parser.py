"""Parse fetched bytes into feed entries with feedparser (RSS 0.9x/1.0/2.0, Atom).

feedparser is given the bytes (never a URL or a path: it would fetch or open it) and the
response's Content-Type, so it can pick the encoding the way a browser would. A malformed
("bozo") feed whose entries the lenient parser recovers is still a feed; a document that
yields no feed at all (an HTML page, an empty body, garbage) raises ``FeedParseError`` with
a reason a person can act on.

HTML sanitisation and relative-URI rewriting inside content are switched off: the normalizer
turns content into plain text itself, so feedparser's sanitiser would be wasted work (with it
feedparser is ~3x slower on the benchmark's feeds).
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin

import feedparser

_HTML_MARKERS = (b"<!doctype html", b"<html", b"<head", b"<body")
# Bozo flags that say nothing is wrong with the entries: a charset guessed differently from
# the declared one (the text is decoded right), an XML feed served as text/plain.
_BENIGN = (feedparser.CharacterEncodingOverride, feedparser.NonXMLContentType)


class FeedParseError(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(slots=True)
class ParsedFeed:
    version: str  # "rss20", "atom10", "rss10", ... ("" when feedparser could not tell)
    title: str | None
    site_url: str | None
    language: str | None
    entries: list[Any]  # feedparser.FeedParserDict entries
    # Set when the document was malformed but entries were recovered from it.
    problem: str | None = None


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return "unknown problem"
    text = getattr(exc, "getMessage", lambda: str(exc))()
    line = getattr(exc, "getLineNumber", lambda: None)()
    where = f" (line {line})" if line else ""
    return f"{text}{where}".strip() or type(exc).__name__


def _advertised_feed(body: bytes, base_url: str | None) -> str | None:
    """The feed an HTML page points to with <link rel=alternate type=...rss/atom...>."""
    from selectolax.lexbor import LexborHTMLParser

    try:
        tree = LexborHTMLParser(body[: 512 * 1024])
    except Exception:
        return None
    for node in tree.css('link[rel~="alternate"]'):
        kind = (node.attributes.get("type") or "").lower()
        href = node.attributes.get("href")
        if href and ("rss" in kind or "atom" in kind):
            return urljoin(base_url, href) if base_url else href
    return None


def parse_feed(
    body: bytes, headers: Mapping[str, str] | None = None, *, base_url: str | None = None
) -> ParsedFeed:
    """Entries of the feed in ``body``; ``FeedParseError`` when there is no feed in it."""
    if not body.strip():
        raise FeedParseError("empty document")
    # No Content-Location: with a base URI feedparser resolves every element's URI against
    # it (~20% of its time); the normalizer resolves the one link it keeps itself.
    response_headers = {k.lower(): v for k, v in (headers or {}).items()}
    response_headers.pop("content-location", None)
    result = feedparser.parse(
        io.BytesIO(body),
        response_headers=response_headers,
        sanitize_html=False,
        resolve_relative_uris=False,
    )
    version = result.get("version") or ""
    entries = list(result.get("entries") or [])
    exc = result.get("bozo_exception")
    bozo = bool(result.get("bozo")) and not isinstance(exc, _BENIGN)
    problem = _describe(exc) if bozo else None
    if not version and not entries:
        head = body[:2048].lstrip().lower()
        content_type = response_headers.get("content-type", "").split(";")[0].strip()
        if any(marker in head for marker in _HTML_MARKERS) or content_type == "text/html":
            hint = _advertised_feed(body, base_url)
            where = f"; the page points to a feed at {hint}" if hint else ""
            raise FeedParseError(f"not a feed: the URL returned an HTML page{where}")
        detail = _describe(exc) if exc is not None else "no feed elements found"
        raise FeedParseError(f"not an RSS/Atom feed: {detail}")
    if bozo and not entries:
        raise FeedParseError(f"malformed feed, no entries could be read: {problem}")
    feed = result.get("feed") or {}
    title_detail = feed.get("title_detail") or {}
    language = feed.get("language") or title_detail.get("language")
    return ParsedFeed(
        version=version,
        title=(feed.get("title") or "").strip() or None,
        site_url=feed.get("link") or None,
        language=language or None,
        entries=entries,
        problem=problem,
    )
