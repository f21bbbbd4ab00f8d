"""OPML, the subscription lists feed readers import and export: reading one into feeds and
writing the feeds back out (OPML 2.0).

Parsed with defusedxml: an OPML file is user input, and a DOCTYPE with entities (billion
laughs) or external entities (XXE: reading local files, reaching internal URLs) is refused
instead of expanded. Every ``<outline>`` with an ``xmlUrl``, at any depth (folders), is a feed;
its category folders become tags. An outline that cannot be a feed spec (a URL or title over
the limits) is refused on its own: the rest of the file still counts. The export puts each
feed in the folders of its category ("World/Europe": two nested folders), so that importing
it again gives the same feeds in the same categories.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path
from xml.etree.ElementTree import Element, ParseError, SubElement, indent, tostring

import defusedxml.ElementTree as SafeET
from defusedxml import DefusedXmlException
from pydantic import ValidationError

from ingestion import store
from ingestion.feedlist import FeedListError, FeedSpec

MAX_OPML_BYTES = 10 * 1024 * 1024


def read_opml(data: bytes) -> tuple[list[FeedSpec], list[tuple[str, str]]]:
    """(feeds, refused) of an OPML document: refused are ``(url, reason)`` of outlines that
    cannot be feeds. ``FeedListError`` with the reason when it is not an OPML document."""
    if len(data) > MAX_OPML_BYTES:
        raise FeedListError(f"OPML file larger than {MAX_OPML_BYTES // (1024 * 1024)} MiB")
    try:
        root = SafeET.fromstring(data, forbid_dtd=True)
    except DefusedXmlException as exc:
        raise FeedListError(f"unsafe OPML refused ({type(exc).__name__}): {exc}") from exc
    except ParseError as exc:
        raise FeedListError(f"not valid XML: {exc}") from exc
    if root.tag.lower() != "opml":
        raise FeedListError(f"not an OPML document (root element <{root.tag}>)")
    body = root.find("body")
    if body is None:
        raise FeedListError("OPML document without a <body>")
    specs: dict[str, FeedSpec] = {}
    refused: list[tuple[str, str]] = []

    def walk(node: Element, folders: list[str]) -> None:
        for outline in node.findall("outline"):
            attrs = {k.lower(): v for k, v in outline.attrib.items()}
            url = (attrs.get("xmlurl") or "").strip()
            label = (attrs.get("title") or attrs.get("text") or "").strip() or None
            if url:
                label = None if label == url else label  # an export's untitled feed
                if url not in specs:
                    try:
                        specs[url] = FeedSpec(url=url, title=label, tags=list(folders))
                    except ValidationError as exc:
                        problems = "; ".join(
                            f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()
                        )
                        refused.append((url[:200], f"not a feed entry ({problems})"))
            else:
                walk(outline, [*folders, label] if label else folders)
            if url and len(outline):
                walk(outline, folders)

    walk(body, [])
    return list(specs.values()), refused


def parse_opml(data: bytes) -> list[FeedSpec]:
    """The feeds of an OPML document (outlines that cannot be feeds left out)."""
    return read_opml(data)[0]


def load_opml(path: Path) -> list[FeedSpec]:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise FeedListError(f"cannot read {path}: {exc.strerror}") from exc
    return parse_opml(data)


def render_opml(feeds: Iterable[store.Feed], *, title: str = "Newsdesk feeds") -> bytes:
    """An OPML 2.0 document of ``feeds``, each in the folders of its category."""
    root = Element("opml", version="2.0")
    head = SubElement(root, "head")
    SubElement(head, "title").text = title
    SubElement(head, "dateCreated").text = format_datetime(datetime.now(UTC), usegmt=True)
    body = SubElement(root, "body")
    folders: dict[tuple[str, ...], Element] = {(): body}

    def folder(path: tuple[str, ...]) -> Element:
        if path not in folders:
            parent = folder(path[:-1])
            folders[path] = SubElement(parent, "outline", text=path[-1], title=path[-1])
        return folders[path]

    for feed in feeds:
        path = tuple(p.strip() for p in (feed.category or "").split("/") if p.strip())
        label = feed.title or feed.url
        attrs = {"type": "rss", "text": label, "title": label, "xmlUrl": feed.url}
        if feed.site_url:
            attrs["htmlUrl"] = feed.site_url
        SubElement(folder(path), "outline", attrs)
    indent(root, space="  ")
    return tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"
