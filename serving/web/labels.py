"""Text the digest page shows about a story, made on the server: the ``why`` line of each
story in ``GET /v1/stories``. Its age wording is the one ``ago()`` in static/digest.js uses
for the times the page writes itself: change both together."""

from __future__ import annotations


def age_text(hours: float) -> str:
    """'just now', '25 min ago', '3 h ago', '2 d ago'."""
    minutes = hours * 60
    if minutes < 1:
        return "just now"
    if minutes < 60:
        return f"{int(minutes)} min ago"
    if hours < 48:
        return f"{int(hours)} h ago"
    return f"{int(hours // 24)} d ago"


def why_line(importance: float, n_sources: int, age_h: float) -> str:
    """The human-readable reason of a story's place: 'importance 82 · 4 sources · 3 h ago'."""
    sources = "1 source" if n_sources == 1 else f"{n_sources} sources"
    return f"importance {round(importance)} · {sources} · {age_text(age_h)}"
