"""What the webhook tests share: a real receiver (an HTTP server in a thread on a free
loopback port that records every POST, headers and raw body, and answers from a script of
statuses, the last one repeating, optionally holding the first request until released), and
stories built through the real paths (articles stored as ingestion does, Results through
ResultStore.save, stories through StoryAssigner) with embeddings chosen by the test."""

from __future__ import annotations

import threading
import uuid
import zlib
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import asyncpg
import numpy as np

from core.article import Article
from serving.settings import ServingSettings
from serving.stories.embedder import EMBEDDING_DIM
from serving.stories.worker import StoryAssigner
from serving.summaries.result_store import ResultStore
from tests.support.serve import make_result, store_articles


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    status: int


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client that hung up (a dispatcher killed mid-request): expected here


@dataclass
class Receiver:
    statuses: list[int] = field(default_factory=lambda: [200])
    hold_first: bool = False  # the first request waits for release() before it is answered
    received: list[Received] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._release = threading.Event()
        self.first_arrived = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:  # quiet
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver._lock:
                    n = len(receiver.received)
                    status = receiver.statuses[min(n, len(receiver.statuses) - 1)]
                    headers = {k.lower(): v for k, v in self.headers.items()}
                    receiver.received.append(Received(self.path, headers, body, status))
                if n == 0 and receiver.hold_first:
                    receiver.first_arrived.set()
                    receiver._release.wait(30)
                answer = b'{"ok": true}' if status < 300 else b'{"ok": false}'
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

        self._server = _QuietServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def url(self, path: str = "/hook", host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def release(self) -> None:
        self._release.set()

    def stop(self) -> None:
        self._release.set()
        self._server.shutdown()
        self._server.server_close()


# --- stories ---------------------------------------------------------------------------------


class GroupEmbedder:
    """Embeddings by the first word of the title: same word, same story; else orthogonal."""

    def embed(self, articles: list[Article]) -> np.ndarray:
        out = np.zeros((len(articles), EMBEDDING_DIM), dtype=np.float32)
        for i, a in enumerate(articles):
            out[i, zlib.crc32(a.title.split()[0].encode()) % EMBEDDING_DIM] = 1.0
        return out


async def add_articles(
    pool: asyncpg.Pool, group: str, n: int = 1, *, source: str = "Test Wire"
) -> list[Article]:
    """``n`` new articles of story ``group`` from ``source`` (one feed per source)."""
    articles = [
        Article(
            title=f"{group} report {uuid.uuid4().hex[:8]}",
            text=f"Text {uuid.uuid4().hex} about {group}, with enough words to be a story.",
            url=f"https://example.test/{uuid.uuid4().hex}",
            source=source,
        )
        for _ in range(n)
    ]
    slug = source.lower().replace(" ", "-")
    return await store_articles(pool, articles, feed_url=f"https://{slug}.example.test/feed.xml")


async def summarize(
    pool: asyncpg.Pool, articles: list[Article], importance: float, topics: list[str] | None = None
) -> None:
    """Store a Result for each article, as the summarization path does."""
    results = ResultStore(pool)
    for a in articles:
        assert await results.save(a, make_result(a, importance=importance, topics=topics)) == (
            "article"
        )


async def assign(pool: asyncpg.Pool, settings: ServingSettings) -> StoryAssigner:
    """One assignment round (stories for every pending article)."""
    assigner = StoryAssigner(pool, settings, GroupEmbedder())  # type: ignore[arg-type]
    await assigner.assign_pending()
    return assigner


async def events(pool: asyncpg.Pool, webhook_id: int | None = None) -> list[asyncpg.Record]:
    return await pool.fetch(
        "SELECT * FROM webhook_events WHERE $1::bigint IS NULL OR webhook_id = $1 ORDER BY id",
        webhook_id,
    )
