"""A real local HTTP server serving feed files the tests write, with per-path behaviour.

    server = FeedServer().start()
    server.route("/a.xml", body=rss_document(items(3)), etag='"v1"')
    server.route("/slow.xml", body=..., delay_s=3)
    server.route("/old.xml", status=301, location="/a.xml")
    url = server.url("/a.xml")
    server.hits("/a.xml"), server.requests_to("/a.xml")[-1].headers["If-None-Match"]

Each path answers as programmed: status, headers, a delay before answering, a redirect,
conditional GET (304 when the request echoes the route's ETag or Last-Modified exactly), a
body sent without Content-Length, or a body trickled in chunks. Every request is recorded
with its headers. Runs in a thread of the test process (``ThreadingHTTPServer``). The feed
documents it serves come from the project's own writer (``ingestion.feed_writer``), with
defaults here so a test names only what it is about.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from ingestion import feed_writer
from ingestion.feed_writer import FeedItem


@dataclass
class Route:
    body: bytes = b""
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str | None = "application/rss+xml; charset=utf-8"
    delay_s: float = 0.0  # before the status line
    location: str | None = None  # for 3xx
    etag: str | None = None  # enables If-None-Match -> 304
    last_modified: str | None = None  # enables If-Modified-Since -> 304
    send_length: bool = True  # False: no Content-Length, the body ends when the socket closes
    chunk_size: int = 0  # > 0: write the body in chunks of this size...
    chunk_delay_s: float = 0.0  # ...with this pause between them


@dataclass
class Request:
    path: str
    headers: dict[str, str]
    at: float


class FeedServer:
    def __init__(self, host: str = "127.0.0.1") -> None:
        self._routes: dict[str, Route] = {}
        self._requests: list[Request] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                server._handle(self)

        self._httpd = ThreadingHTTPServer((host, 0), Handler)
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    # --- life cycle -------------------------------------------------------------------
    def start(self) -> FeedServer:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    # --- programming ------------------------------------------------------------------
    def route(self, path: str, **kwargs: object) -> Route:
        route = Route(**kwargs)  # type: ignore[arg-type]
        with self._lock:
            self._routes[path] = route
        return route

    def update(self, path: str, **kwargs: object) -> None:
        with self._lock:
            for key, value in kwargs.items():
                setattr(self._routes[path], key, value)

    # --- inspection -------------------------------------------------------------------
    def requests_to(self, path: str) -> list[Request]:
        with self._lock:
            return [r for r in self._requests if r.path == path]

    def hits(self, path: str) -> int:
        return len(self.requests_to(path))

    def total_hits(self) -> int:
        with self._lock:
            return len(self._requests)

    # --- serving ----------------------------------------------------------------------
    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        path = h.path.split("?", 1)[0]
        with self._lock:
            self._requests.append(Request(path, dict(h.headers.items()), time.monotonic()))
            route = self._routes.get(path)
        if route is None:
            self._send(h, 404, {"Content-Type": "text/plain"}, b"not found")
            return
        if route.delay_s:
            time.sleep(route.delay_s)
        headers = dict(route.headers)
        if route.content_type and 200 <= route.status < 300:
            headers.setdefault("Content-Type", route.content_type)
        if route.etag:
            headers["ETag"] = route.etag
        if route.last_modified:
            headers["Last-Modified"] = route.last_modified
        if route.location:
            headers["Location"] = route.location
        if route.status == 200:
            inm = h.headers.get("If-None-Match")
            ims = h.headers.get("If-Modified-Since")
            if (route.etag and inm == route.etag) or (
                route.last_modified and ims == route.last_modified and not inm
            ):
                headers.pop("Content-Type", None)
                self._send(h, 304, headers, b"")
                return
        body = route.body if route.status < 300 or route.status >= 400 else b""
        try:
            self._send(h, route.status, headers, body, route)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (size cap, timeout): expected in those tests

    @staticmethod
    def _send(
        h: BaseHTTPRequestHandler,
        status: int,
        headers: dict[str, str],
        body: bytes,
        route: Route | None = None,
    ) -> None:
        h.send_response(status)
        for k, v in headers.items():
            h.send_header(k, v)
        if route is not None and not route.send_length:
            h.send_header("Connection", "close")
            h.close_connection = True
        elif status != 304:
            h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if status == 304:
            return
        if route is not None and route.chunk_size:
            for i in range(0, len(body), route.chunk_size):
                h.wfile.write(body[i : i + route.chunk_size])
                h.wfile.flush()
                time.sleep(route.chunk_delay_s)
        else:
            h.wfile.write(body)


# --- feed documents (written by ingestion.feed_writer, with the tests' defaults) -------------

TEST_DATE = datetime(2025, 6, 10, 4, 0, tzinfo=UTC)


@dataclass(frozen=True)
class Item(FeedItem):
    """A feed item with defaults, so a test names only the fields it is about."""

    title: str = "A story"
    link: str | None = "https://news.example.com/story"
    guid: str | None = None
    description: str | None = "<p>What happened, in short.</p>"
    content: str | None = None  # content:encoded (HTML)
    pub_date: datetime | str | None = TEST_DATE
    author: str | None = None


def items(n: int, *, prefix: str = "story", site: str = "https://news.example.com") -> list[Item]:
    return [
        Item(
            title=f"{prefix.title()} {i}: something happened",
            link=f"{site}/{prefix}/{i}",
            guid=f"{site}/{prefix}/{i}",
            description=f"<p>Summary of {prefix} {i}. It has <b>bold</b> words.</p>",
            pub_date=TEST_DATE.replace(minute=i % 60),
        )
        for i in range(n)
    ]


def rss_document(
    entries: Iterable[FeedItem],
    *,
    title: str = "Example News",
    link: str = "https://news.example.com/",
    language: str | None = "en-us",
    encoding: str = "utf-8",
    declare_encoding: str | None = "utf-8",
) -> bytes:
    """An RSS 2.0 document (with content:encoded when an item has content)."""
    return feed_writer.rss_document(
        entries,
        title=title,
        link=link,
        description="Test feed",
        language=language,
        encoding=encoding,
        declare_encoding=declare_encoding,
    )


def atom_document(entries: Iterable[FeedItem], *, title: str = "Example Atom") -> bytes:
    return feed_writer.atom_document(
        entries, title=title, feed_id="urn:example:feed", updated=TEST_DATE, language="en"
    )
