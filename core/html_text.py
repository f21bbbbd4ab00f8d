"""HTML -> clean plain text, keeping paragraph breaks (selectolax, the Lexbor engine).

Why selectolax: feed content is an HTML fragment, not a page, so boilerplate removal
(trafilatura) has nothing to remove; BeautifulSoup builds its tree in Python; selectolax is a
maintained binding to Lexbor, a spec-compliant HTML5 parser in C, so broken markup is repaired
the way a browser would, in tens of microseconds per entry.

What comes out: text of the visible elements only (script, style, and other non-content
elements dropped with their text), each block element (p, div, li, h1..., blockquote...)
its own paragraph separated by a blank line, <br> a line break, runs of whitespace one space.
"""

from __future__ import annotations

import html
import re

from selectolax.lexbor import LexborHTMLParser

_DROP = (
    "script, style, noscript, template, iframe, object, embed, svg, math, canvas, video, "
    "audio, head, button, select, textarea, form"
)
_BLOCKS = frozenset(
    (
        "p div li ul ol dl dt dd h1 h2 h3 h4 h5 h6 blockquote pre table thead tbody tfoot tr "
        "section article header footer aside main nav figure figcaption hr address details "
        "summary caption center"
    ).split()
)
_DROP_TAG = re.compile(r"<(?:" + "|".join(t.strip() for t in _DROP.split(",")) + r")\b", re.I)
_PARA = "\x00"  # sentinels inserted into the tree, then split on
_LINE = "\x01"
_MARKUP = re.compile(r"<[a-zA-Z/!?]")
# Characters that are invisible but not whitespace to str.split().
_INVISIBLE = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff\u00ad"), None)


def looks_like_html(text: str) -> bool:
    return bool(_MARKUP.search(text))


def _tidy(text: str) -> str:
    """Collapse whitespace inside lines; keep single line breaks and paragraph breaks."""
    paragraphs = []
    for para in text.translate(_INVISIBLE).split(_PARA):
        lines = (" ".join(line.split()) for line in para.split(_LINE))
        joined = "\n".join(line for line in lines if line)
        if joined:
            paragraphs.append(joined)
    return "\n\n".join(paragraphs)


def plain_text_paragraphs(text: str) -> str:
    """Plain text (maybe with entities) tidied: blank lines separate paragraphs."""
    if "&" in text:
        text = html.unescape(text)
    text = re.sub(r"\n[ \t\r\f\v]*\n\s*", _PARA, text.replace("\r\n", "\n"))
    return _tidy(text.replace("\n", _LINE))


def html_to_text(markup: str) -> str:
    """Visible text of an HTML fragment or page, paragraphs separated by a blank line."""
    if not markup or not markup.strip():
        return ""
    if not looks_like_html(markup):
        return plain_text_paragraphs(markup)
    tree = LexborHTMLParser(markup)
    root = tree.body or tree.root
    if root is None:
        return ""
    # CSS matching costs more than the parse itself: only when such a tag is present.
    if _DROP_TAG.search(markup):
        for node in root.css(_DROP):
            node.decompose()
    # Collect first, then edit: the tree must not change under the traversal.
    marks = [node for node in root.traverse() if node.tag in _BLOCKS or node.tag == "br"]
    for node in marks:
        if node.tag == "br":
            node.replace_with(_LINE)
        else:
            node.insert_before(_PARA)
            node.insert_after(_PARA)
    return _tidy(root.text(deep=True))
