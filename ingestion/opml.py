"""OPML import: the feeds of an OPML subscription list (what feed readers export).

Parsed with defusedxml: an OPML file is user input, and a DOCTYPE with entities (billion
laughs) or external entities (XXE: reading local files, reaching internal URLs) is refused
instead of expanded. Every ``<outline>`` with an ``xmlUrl``, at any depth (folders), is a feed;
its category folders become tags.
"""

from __future__ import annotations

from pathlib import Path
from xml.etree.ElementTree import Element, ParseError

import defusedxml.ElementTree as SafeET
from defusedxml import DefusedXmlException

from ingestion.feedlist import FeedListError, FeedSpec

MAX_OPML_BYTES = 10 * 1024 * 1024


def parse_opml(data: bytes) -> list[FeedSpec]:
    """Feeds in an OPML document; ``FeedListError`` with the reason when it is not one."""
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

    def walk(node: Element, folders: list[str]) -> None:
        for outline in node.findall("outline"):
            attrs = {k.lower(): v for k, v in outline.attrib.items()}
            url = (attrs.get("xmlurl") or "").strip()
            label = (attrs.get("title") or attrs.get("text") or "").strip() or None
            if url:
                if url not in specs:
                    specs[url] = FeedSpec(url=url, title=label, tags=list(folders))
            else:
                walk(outline, [*folders, label] if label else folders)
            if url and len(outline):
                walk(outline, folders)

    walk(body, [])
    return list(specs.values())


def load_opml(path: Path) -> list[FeedSpec]:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise FeedListError(f"cannot read {path}: {exc.strerror}") from exc
    return parse_opml(data)
