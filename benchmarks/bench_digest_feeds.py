"""The digest feeds (``/feeds/digest.{rss,atom,json}``): latency of a full reply and of a
conditional one (304 on ``If-None-Match`` / ``If-Modified-Since``), beside ``GET /v1/stories``
(JSON) on the same data as the baseline, measured in the same run.

    python benchmarks/bench_digest_feeds.py                   # PostgreSQL on 127.0.0.1:5432
    python benchmarks/bench_digest_feeds.py --stories 400 --articles 3000 --requests 300

A day's news: ``--articles`` articles from ``--feeds`` feeds, all published in the last 24 h,
in ``--stories`` stories (sizes skewed: a few stories have dozens of articles, most a few),
each with a stored Result; stored as ingestion stores them, Results through the ResultStore,
stories by the real assignment (:func:`serving.stories.store.assign_articles`) from chosen
embeddings (one random unit vector per story, plus noise), so no model is loaded. Requests go
to the real app in-process (LocalBackend, httpx over ASGI) one at a time, the endpoints
interleaved round by round in a new random order each round, so that the machine's load
(and the garbage collection a full reply leaves behind) falls on all alike. Uses a fresh
database on the server (dropped afterwards). The load average is printed before and after:
the CPUs are shared, and figures under load are not comparable.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
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
from core.article_rows import load_articles  # noqa: E402
from ingestion import store as ingest_store  # noqa: E402
from ingestion.normalizer import NormalizedEntry  # noqa: E402
from serving.deployments.local import LocalBackend, local_app  # noqa: E402
from serving.digest.store import window_fingerprint  # noqa: E402
from serving.model.result import ImportanceParts, Result  # noqa: E402
from serving.stories.embedder import EMBEDDING_DIM  # noqa: E402
from serving.stories.store import assign_articles  # noqa: E402
from serving.summaries.result_store import ResultStore  # noqa: E402

TOPICS = ["politics", "business", "sport", "health", "science", "world", "climate", "tech"]


def load_avg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _no_model() -> None:
    raise AssertionError("the feeds must never load the model")


async def build_day(
    pool: asyncpg.Pool, *, n_stories: int, n_articles: int, n_feeds: int, seed: int = 0
) -> dict[str, int]:
    """Store a day's articles, Results and stories; returns what was stored."""
    rng = np.random.default_rng(seed)
    now = datetime.now(UTC)
    # story sizes: every story one article, the rest spread by 1/sqrt(rank) (400 stories from
    # 3,000 articles: the biggest ~65 articles, the 10th ~23, the 100th ~9, the median 6)
    weights = 1.0 / np.arange(1, n_stories + 1) ** 0.5
    extra = rng.multinomial(n_articles - n_stories, weights / weights.sum())
    sizes = 1 + extra
    story_of = np.repeat(np.arange(n_stories), sizes)
    rng.shuffle(story_of)
    centroids = rng.standard_normal((n_stories, EMBEDDING_DIM)).astype(np.float32)
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    story_time = now - timedelta(hours=23.5) * rng.random(n_stories)

    by_feed: dict[int, list[NormalizedEntry]] = {f: [] for f in range(n_feeds)}
    plan: dict[str, int] = {}
    for i, s in enumerate(story_of):
        key = f"a{i}"
        feed = int(rng.integers(n_feeds))
        published = min(now, story_time[s] + timedelta(minutes=float(rng.uniform(0, 90))))
        text = f"Story {s} report {i}. " + "Officials gave the details of what happened. " * 4
        by_feed[feed].append(
            NormalizedEntry(
                dedup_key=key,
                article=Article(
                    title=f"Story {s}: report {i}",
                    text=text,
                    guid=key,
                    source=f"Feed {feed}",
                    published=published,
                    url=f"https://feed{feed}.test/{key}",
                ),
            )
        )
        plan[key] = int(s)
    articles: list[Article] = []
    for feed, entries in by_feed.items():
        record, _ = await ingest_store.add_feed(
            pool, f"https://feed{feed}.test/rss", title=f"Feed {feed}"
        )
        async with pool.acquire() as conn, conn.transaction():
            await ingest_store.store_articles(conn, record.id, entries)
        articles += await load_articles(pool, feed_id=record.id, limit=len(entries) + 1)

    store = ResultStore(pool)
    for a in articles:
        importance = float(np.clip(rng.normal(45, 20), 1, 99))
        topics = list(rng.choice(TOPICS, size=2, replace=False))
        result = Result(
            article_id=a.id,
            content_hash=a.content_hash,
            summary=f"Summary of {a.title}: what happened, where, and who said so.",
            importance=importance,
            importance_parts=ImportanceParts(
                model=importance, prior=importance, model_weight=0, prior_weight=1
            ),
            topics=topics,
            model_id="bench",
            prompt_version="bench",
        )
        await store.save(a, result)

    vectors = np.stack([centroids[plan[a.guid or ""]] for a in articles])
    vectors += 0.01 * rng.standard_normal(vectors.shape).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    async with pool.acquire() as conn:
        report = await assign_articles(conn, articles, vectors, threshold=0.8, window_h=48)
    return {
        "articles": len(articles),
        "assigned": report.assigned,
        "stories": int(await pool.fetchval("SELECT count(*) FROM stories")),
    }


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def measure(
    client: httpx.AsyncClient, pool: asyncpg.Pool, *, limit: int, requests: int
) -> tuple[dict[str, list[float]], dict[str, int]]:
    """Latencies (ms) of each endpoint, interleaved; the reply sizes of the full ones."""
    qs = f"?limit={limit}"
    cases: dict[str, tuple[str, dict[str, str]]] = {"GET /v1/stories (baseline)": (qs, {})}
    sizes: dict[str, int] = {}
    stories = await client.get(f"/v1/stories{qs}")
    assert stories.status_code == 200, stories.text
    sizes["GET /v1/stories (baseline)"] = len(stories.content)
    for fmt in ("rss", "atom", "json"):
        first = await client.get(f"/feeds/digest.{fmt}{qs}")
        assert first.status_code == 200, first.text
        sizes[f"{fmt}: full"] = len(first.content)
        cases[f"{fmt}: full"] = (qs, {})
        cases[f"{fmt}: 304 If-None-Match"] = (qs, {"If-None-Match": first.headers["etag"]})
        cases[f"{fmt}: 304 If-Modified-Since"] = (
            qs,
            {"If-Modified-Since": first.headers["last-modified"]},
        )
    paths = {
        name: ("/v1/stories" if "stories" in name else f"/feeds/digest.{name.split(':')[0]}")
        for name in cases
    }
    samples: dict[str, list[float]] = {name: [] for name in cases}
    samples["fingerprint query alone"] = []
    since = datetime.now(UTC) - timedelta(hours=24)
    order = list(cases)
    rng = random.Random(limit)
    for _ in range(requests):
        # a new order every round: the request after a full reply pays for its garbage
        rng.shuffle(order)
        for name in order:
            query, headers = cases[name]
            started = time.perf_counter()
            response = await client.get(paths[name] + query, headers=headers)
            samples[name].append(1000 * (time.perf_counter() - started))
            expected = 304 if "304" in name else 200
            assert response.status_code == expected, (name, response.status_code)
        started = time.perf_counter()
        await window_fingerprint(pool, since)
        samples["fingerprint query alone"].append(1000 * (time.perf_counter() - started))
    return samples, sizes


def table(samples: dict[str, list[float]], sizes: dict[str, int]) -> None:
    base = statistics.median(samples["GET /v1/stories (baseline)"])
    print("| request | p50 ms | p99 ms | p50 / baseline | reply bytes |")
    print("|---|---|---|---|---|")
    for name, values in samples.items():
        p50, p99 = statistics.median(values), percentile(values, 0.99)
        size = f"{sizes[name]:,}" if name in sizes else ("0" if "304" in name else "-")
        print(f"| {name} | {p50:.2f} | {p99:.2f} | {p50 / base:.2f} | {size} |")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--stories", type=int, default=400)
    parser.add_argument("--articles", type=int, default=3000)
    parser.add_argument("--feeds", type=int, default=60)
    parser.add_argument("--requests", type=int, default=200, help="per endpoint and limit")
    parser.add_argument("--limits", type=int, nargs="+", default=[30, 200])
    args = parser.parse_args()
    if args.articles < args.stories:
        parser.error("--articles must be at least --stories")
    print(f"load average before: {load_avg()}")
    name = f"nd_bench_feeds_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(args.dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    state = Path(tempfile.mkdtemp(prefix="bench-feeds-"))
    settings = Settings(database_url=db.with_database(args.dsn, name), state_dir=state)
    pool = await db.create_pool(settings)
    results = []
    try:
        started = time.perf_counter()
        day = await build_day(
            pool, n_stories=args.stories, n_articles=args.articles, n_feeds=args.feeds
        )
        build_s = time.perf_counter() - started
        backend = LocalBackend(settings, _no_model, store=ResultStore(pool))  # type: ignore[arg-type]
        transport = httpx.ASGITransport(app=local_app(backend, settings))
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
            for limit in args.limits:
                results.append(
                    (limit, *await measure(client, pool, limit=limit, requests=args.requests))
                )
    finally:
        await pool.close()
        admin = await asyncpg.connect(args.dsn)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()

    print(
        f"\n{day['articles']:,} articles from {args.feeds} feeds in {day['stories']:,} stories "
        f"(stored and assigned in {build_s:.1f} s); {args.requests} requests per row, one at a "
        "time, in-process (httpx over ASGI)"
    )
    for limit, samples, sizes in results:
        print(f"\n### limit={limit}\n")
        table(samples, sizes)
    print(f"\nload average after: {load_avg()}")


if __name__ == "__main__":
    asyncio.run(main())
