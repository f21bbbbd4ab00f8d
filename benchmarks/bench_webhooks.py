"""Webhooks: delivery latency and dispatcher throughput against a local receiver, each beside a
bare httpx POST to the same receiver (the ceiling) measured in the same run.

    python benchmarks/bench_webhooks.py                        # PostgreSQL on 127.0.0.1:5432
    python benchmarks/bench_webhooks.py --stories 200 --events 4000

1. Latency: N stories whose article has no Result yet; one Result stored every ``--gap-ms``
   through ``ResultStore.save`` (which enqueues the event in its transaction); measured from
   just before the save to the receiver reading the request (wall clocks of two processes on
   one machine), p50/p99, with ``WebhookDispatcher.run_forever`` woken by LISTEN/NOTIFY.
   Baseline: one bare ``httpx`` POST of the same body, from before the call to the receiver.
2. Throughput: M events already in the outbox, drained by one dispatcher (claim, sign, POST,
   settle + log row per event; ``webhook_batch`` at once). Baseline: the same M bodies POSTed
   by a bare ``httpx`` loop with the same concurrency and no database.

The receiver is a minimal asyncio HTTP/1.1 server in its own process (keep-alive, answers
200 at once, records each event id with its arrival time). Uses a fresh database on the
server (dropped afterwards). Machine load is printed before and after: the CPUs are shared
and figures under load are not comparable.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import asyncpg  # noqa: E402
import httpx  # noqa: E402
import numpy as np  # noqa: E402

from cluster.settings import Settings  # noqa: E402
from core import db  # noqa: E402
from core.article import Article  # noqa: E402
from ingestion import store as ingest_store  # noqa: E402
from ingestion.normalizer import NormalizedEntry, dedup_key  # noqa: E402
from serving.model.result import ImportanceParts, Result  # noqa: E402
from serving.stories.embedder import EMBEDDING_DIM  # noqa: E402
from serving.stories.worker import StoryAssigner  # noqa: E402
from serving.summaries.result_store import ResultStore  # noqa: E402
from serving.webhooks import store as hook_store  # noqa: E402
from serving.webhooks.dispatcher import WebhookDispatcher  # noqa: E402
from serving.webhooks.schemas import WebhookCreate  # noqa: E402
from serving.webhooks.subscriptions import SubscribePolicy, subscribe  # noqa: E402

FAKE_STORY = 10_000_000  # story ids of the throughput events (no such stories: not needed)


def load_avg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


# --- the receiver (its own process) -----------------------------------------------------------


def _receiver_main(port_queue: mp.Queue, log_path: str) -> None:
    arrivals: list[tuple[str, float]] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                at = time.time()
                headers = {}
                for line in head.decode("latin-1").split("\r\n")[1:]:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
                await reader.readexactly(int(headers.get("content-length", "0")))
                if headers.get("x-dump"):
                    Path(log_path).write_text(json.dumps(arrivals))  # noqa: ASYNC240 (tiny)
                    arrivals.clear()
                else:
                    arrivals.append((headers.get("x-newsdesk-event-id", ""), at))
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def serve() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=1024)
        port_queue.put(server.sockets[0].getsockname()[1])
        async with server:
            await server.serve_forever()

    asyncio.run(serve())


class ReceiverProcess:
    def __init__(self) -> None:
        self.log = Path(tempfile.mkstemp(prefix="bench-webhooks-", suffix=".json")[1])
        ctx = mp.get_context("spawn")
        queue = ctx.Queue()
        self.proc = ctx.Process(target=_receiver_main, args=(queue, str(self.log)), daemon=True)
        self.proc.start()
        self.port = queue.get(timeout=30)
        self.url = f"http://127.0.0.1:{self.port}/hook"

    async def arrivals(self) -> list[tuple[str, float]]:
        """Every (event id, arrival time) since the last call."""
        async with httpx.AsyncClient() as c:
            await c.post(self.url, content=b"", headers={"X-Dump": "1"})
        return [tuple(a) for a in json.loads(self.log.read_text())]  # type: ignore[misc]

    def stop(self) -> None:
        self.proc.kill()
        self.proc.join(5)
        self.log.unlink(missing_ok=True)


# --- set-up -----------------------------------------------------------------------------------


class RandomEmbedder:
    """Random unit vectors: every article founds its own story."""

    def __init__(self) -> None:
        self.rng = np.random.default_rng()  # unseeded: two calls must not repeat vectors

    def embed(self, articles: list[Article]) -> np.ndarray:
        v = self.rng.normal(size=(len(articles), EMBEDDING_DIM)).astype(np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)


async def stories_without_results(pool: asyncpg.Pool, settings: Settings, n: int) -> list[Article]:
    feed, _ = await ingest_store.add_feed(pool, "https://bench.example.test/feed.xml")
    now = datetime.now(UTC)
    entries = []
    for i in range(n):
        a = Article(
            title=f"Bench story {i} {uuid.uuid4().hex[:6]}",
            text=f"Text of bench story {i}: {uuid.uuid4().hex}. Long enough to be an article.",
            url=f"https://bench.example.test/{uuid.uuid4().hex}",
            source="Bench Wire",
            published=now - timedelta(seconds=i),
        )
        entries.append(NormalizedEntry(dedup_key(a.guid, a.url, a.title, a.text), a))
    async with pool.acquire() as conn, conn.transaction():
        await ingest_store.store_articles(conn, feed.id, entries)
    settings = settings.model_copy(update={"story_assign_batch": 10_000})
    await StoryAssigner(pool, settings, RandomEmbedder()).assign_pending()  # type: ignore[arg-type]
    rows = await pool.fetch(
        "SELECT id, content_hash FROM articles WHERE feed_id = $1 ORDER BY id", feed.id
    )
    by_hash = {r["content_hash"]: r["id"] for r in rows}
    return [
        e.article.model_copy(update={"id": by_hash[e.article.content_hash], "feed_id": feed.id})
        for e in entries
    ]


def result_of(article: Article) -> Result:
    return Result(
        article_id=article.id,
        content_hash=article.content_hash,
        summary=f"Summary of {article.title}.",
        importance=70.0,
        importance_parts=ImportanceParts(model=70, prior=70, model_weight=0.5, prior_weight=0.5),
        topics=["bench"],
        model_id="bench-model",
        prompt_version="bench-v1",
    )


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# --- 1. latency -------------------------------------------------------------------------------


async def latency(
    pool: asyncpg.Pool, settings: Settings, receiver: ReceiverProcess, n: int, gap_s: float
) -> dict:
    results = ResultStore(pool)
    # baseline of the save: the same saves with no webhook subscribed (the matcher's floor)
    unsubscribed = []
    for a in await stories_without_results(pool, settings, n):
        started = time.perf_counter()
        await results.save(a, result_of(a))
        unsubscribed.append((time.perf_counter() - started) * 1000)
        await asyncio.sleep(gap_s)
    await subscribe(pool, WebhookCreate(url=receiver.url), SubscribePolicy(allow_loopback=True))
    articles = await stories_without_results(pool, settings, n)
    dispatcher = WebhookDispatcher(pool, settings)
    task = asyncio.create_task(dispatcher.run_forever())
    await asyncio.sleep(0.5)  # LISTEN in place
    await receiver.arrivals()
    stored_at: dict[int, float] = {}
    save_ms = []
    for a in articles:
        assert a.id is not None
        stored_at[a.id] = time.time()
        started = time.perf_counter()
        await results.save(a, result_of(a))
        save_ms.append((time.perf_counter() - started) * 1000)
        await asyncio.sleep(gap_s)
    pending = "SELECT count(*) FROM webhook_events WHERE state = 'pending'"
    while await pool.fetchval(pending):  # noqa: ASYNC110 (polling the database)
        await asyncio.sleep(0.1)
    dispatcher.stop()
    await task
    await dispatcher.aclose()
    arrived = dict(await receiver.arrivals())
    rows = await pool.fetch(
        "SELECT e.event_id, sa.article_id FROM webhook_events e "
        "JOIN story_articles sa ON sa.story_id = e.story_id"
    )
    ms = [(arrived[r["event_id"]] - stored_at[r["article_id"]]) * 1000 for r in rows]
    assert len(ms) == n, (len(ms), n)

    body = (await pool.fetchval("SELECT body FROM webhook_events LIMIT 1")).encode()
    bare = []
    async with httpx.AsyncClient() as client:
        await client.post(receiver.url, content=body)  # connect outside the timings
        await receiver.arrivals()
        sent_at = []
        for _ in range(n):
            sent_at.append(time.time())
            await client.post(receiver.url, content=body, headers={"X-Newsdesk-Event-Id": "b"})
            await asyncio.sleep(gap_s)
    bare = [
        (at - t0) * 1000 for (_, at), t0 in zip(await receiver.arrivals(), sent_at, strict=True)
    ]
    return {
        "p50": statistics.median(ms),
        "p99": pct(ms, 0.99),
        "save_p50": statistics.median(save_ms),
        "save_bare_p50": statistics.median(unsubscribed),
        "bare_p50": statistics.median(bare),
        "bare_p99": pct(bare, 0.99),
    }


# --- 2. throughput ----------------------------------------------------------------------------


async def throughput(
    pool: asyncpg.Pool, settings: Settings, receiver: ReceiverProcess, m: int
) -> dict:
    hook = await pool.fetchval("SELECT min(id) FROM webhooks")
    body = await pool.fetchval("SELECT body FROM webhook_events LIMIT 1")
    now = datetime.now(UTC)
    events = [
        hook_store.NewEvent(
            f"evt_{uuid.uuid4().hex}", hook, 10_000_000 + i, "story.matched", 0, 1, body, now
        )
        for i in range(m)
    ]
    async with pool.acquire() as conn, conn.transaction():
        await hook_store.insert_events(conn, events)
    await receiver.arrivals()
    dispatcher = WebhookDispatcher(pool, settings)
    done = "SELECT count(*) FROM webhook_events WHERE state = 'delivered' AND story_id >= $1"
    started = time.perf_counter()
    task = asyncio.create_task(dispatcher.run_forever())
    while await pool.fetchval(done, FAKE_STORY) < m:  # noqa: ASYNC110 (polling the database)
        await asyncio.sleep(0.02)
    elapsed = time.perf_counter() - started
    dispatcher.stop()
    await task
    await dispatcher.aclose()
    got = await receiver.arrivals()
    assert len(got) == m, (len(got), m)

    batch = settings.webhook_batch
    payload = body.encode()
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=batch)) as client:
        await client.post(receiver.url, content=payload)
        await receiver.arrivals()
        started = time.perf_counter()
        for i in range(0, m, batch):
            await asyncio.gather(
                *(client.post(receiver.url, content=payload) for _ in range(min(batch, m - i)))
            )
        bare_elapsed = time.perf_counter() - started
    assert len(await receiver.arrivals()) == m
    return {"events_per_s": m / elapsed, "bare_per_s": m / bare_elapsed}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--stories", type=int, default=200, help="Latency samples.")
    parser.add_argument("--gap-ms", type=float, default=20.0, help="Between two Results.")
    parser.add_argument("--events", type=int, default=3000, help="Events drained.")
    args = parser.parse_args()
    print(f"load average before: {load_avg()}")
    name = f"nd_bench_webhooks_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(args.dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    settings = Settings(
        database_url=db.with_database(args.dsn, name),
        state_dir=Path(tempfile.mkdtemp(prefix="bench-webhooks-")),
        webhook_allow_loopback=True,
        webhook_poll_interval_s=1.0,
    )
    receiver = ReceiverProcess()
    pool = await db.create_pool(settings)
    try:
        lat = await latency(pool, settings, receiver, args.stories, args.gap_ms / 1000)
        thr = await throughput(pool, settings, receiver, args.events)
    finally:
        await pool.close()
        receiver.stop()
        admin = await asyncpg.connect(args.dsn)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()

    print(
        f"\n### Latency: Result stored -> receiver ({args.stories} stories, one every "
        f"{args.gap_ms:g} ms)\n"
    )
    print("| path | p50 ms | p99 ms | p50 ratio |")
    print("|---|---|---|---|")
    print(f"| bare httpx POST (baseline) | {lat['bare_p50']:.1f} | {lat['bare_p99']:.1f} | 1.00 |")
    print(
        f"| save + outbox + NOTIFY + dispatcher | {lat['p50']:.1f} | {lat['p99']:.1f} | "
        f"{lat['p50'] / lat['bare_p50']:.1f}x |"
    )
    print("\n| the save alone (ResultStore.save) | p50 ms | ratio |")
    print("|---|---|---|")
    print(f"| no webhook subscribed (baseline) | {lat['save_bare_p50']:.1f} | 1.00 |")
    print(
        f"| one webhook: + matcher + event, same transaction | {lat['save_p50']:.1f} | "
        f"{lat['save_p50'] / lat['save_bare_p50']:.2f} |"
    )
    print(f"\n### Throughput: {args.events} events drained (batch {settings.webhook_batch})\n")
    print("| path | events/s | ratio |")
    print("|---|---|---|")
    print(f"| bare httpx POST loop (ceiling) | {thr['bare_per_s']:.0f} | 1.00 |")
    print(
        f"| one dispatcher (claim, sign, POST, settle + log) | {thr['events_per_s']:.0f} | "
        f"{thr['events_per_s'] / thr['bare_per_s']:.2f} |"
    )
    print(f"\nload average after: {load_avg()}")


if __name__ == "__main__":
    asyncio.run(main())
