"""Conditional GETs (RFC 9110 §13): strong ETags made from what a representation is a
function of, ``If-None-Match`` (weak comparison, ``*``, lists) before ``If-Modified-Since``
(ignored when ``If-None-Match`` is present, as the RFC says), and the 304 reply. Routes that
can tell their validators before doing the work (the digest feeds) answer a matching request
without it."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_to_datetime

from starlette.requests import Request
from starlette.responses import Response


def strong_etag(*parts: str) -> str:
    """A strong entity tag from the strings the representation is a function of."""
    digest = hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()
    return f'"{digest[:32]}"'


def http_date(at: datetime) -> str:
    """``at`` as an HTTP-date (``Mon, 30 Nov 2026 12:00:00 GMT``)."""
    return format_datetime(at.astimezone(UTC).replace(microsecond=0), usegmt=True)


def _opaque(tag: str) -> str:
    tag = tag.strip()
    return tag[2:] if tag.startswith("W/") else tag


def etag_matches(if_none_match: str, etag: str) -> bool:
    """Whether an ``If-None-Match`` value names ``etag`` (weak comparison) or is ``*``."""
    if if_none_match.strip() == "*":
        return True
    wanted = _opaque(etag)
    return any(_opaque(tag) == wanted for tag in if_none_match.split(",") if tag.strip())


def modified_since(request: Request) -> datetime | None:
    """The request's ``If-Modified-Since`` (None: absent, invalid, or overridden by an
    ``If-None-Match``)."""
    if "if-none-match" in request.headers:
        return None
    raw = request.headers.get("if-modified-since")
    if not raw:
        return None
    try:
        at = parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def unchanged_since(last_modified: datetime | None, since: datetime | None) -> bool:
    """Whether a resource last modified at ``last_modified`` is unchanged since ``since``, to
    the second (HTTP-dates have no fractions)."""
    if last_modified is None or since is None:
        return False
    return int(last_modified.timestamp()) <= int(since.timestamp())


def etag_hit(request: Request, etag: str) -> bool:
    """Whether the request's ``If-None-Match`` matches ``etag``."""
    given = request.headers.get("if-none-match")
    return given is not None and etag_matches(given, etag)


def not_modified(headers: dict[str, str]) -> Response:
    """The 304 reply, with the validators and caching headers a 200 would carry."""
    return Response(status_code=304, headers=headers)
