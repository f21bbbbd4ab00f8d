"""The digest page: static HTML/CSS/vanilla JS shipped as package data (no CDN, works
offline). ``routes()`` gives the Starlette routes the API app mounts: ``/`` (the page) and
``/web/*`` (its assets). The page reads ``GET /v1/stories`` and re-reads it on a filter change
and every minute, without reloading."""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

WEB_DIR = Path(__file__).resolve().parent

# Only the page's own files and API calls: no inline script, no third-party origin.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


async def index(request: Request) -> Response:
    return FileResponse(
        WEB_DIR / "index.html",
        media_type="text/html; charset=utf-8",
        headers={
            "Cache-Control": "no-cache",
            "Content-Security-Policy": CONTENT_SECURITY_POLICY,
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
        },
    )


def routes() -> list[BaseRoute]:
    """``/`` and ``/web/...``, to put in the API app's routes."""
    return [
        Route("/", index, methods=["GET", "HEAD"], name="digest"),
        Mount("/web", app=StaticFiles(directory=WEB_DIR / "static"), name="web"),
    ]
