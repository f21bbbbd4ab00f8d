"""Stories: grouping throughput and quality on the sample feeds, its cost at production scale,
and the read path, each beside a baseline from the same run.

    python benchmarks/bench_stories.py                        # PostgreSQL on 127.0.0.1:5432
    python benchmarks/bench_stories.py --dsn postgresql://... --window-stories 1000 10000

1. Sample feeds (all 300 Lee articles; 372 items over 4 outlets, with planted copies):
   ingested by the real poller over file:// URLs, then grouped by ``StoryAssigner`` (embedding +
   assignment). Baseline: the embedding alone (``ImportanceScorer.embed`` on the same texts),
   the part no grouping can avoid, timed before and after the grouping (the faster counts).
   Quality: planted copies found in their original's story (recall) and how many stories the
   originals make.
2. Production scale: assigning 64 new articles when N stories are alive in the window
   (random unit centroids): ms per article, beside the numpy nearest-neighbour search alone.
3. Reads: ``list_stories`` (the GET /v1/stories query) vs ``ResultStore.list_articles`` (the
   GET /v1/articles query) on the same database, p50 over 30 calls each.

Uses a fresh database on the server (dropped afterwards). Machine load is printed before and
after: the CPUs are shared and figures under load are not comparable.
"""

from __future__ import annotations

import argparse
import asyncio
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
import numpy as np  # noqa: E402

from cluster.sample_data import SAMPLE_SOURCES, build_sample_feeds  # noqa: E402
from cluster.settings import Settings  # noqa: E402
from core import db  # noqa: E402
from core.article import Article  # noqa: E402
from ingestion.feedlist import FeedSpec, add_feeds  # noqa: E402
from ingestion.poll_loop import Poller  # noqa: E402
from serving.model.result import ImportanceParts, Result  # noqa: E402
from serving.stories.clustering import Candidates  # noqa: E402
from serving.stories.embedder import EMBEDDING_DIM, StoryEmbedder  # noqa: E402
from serving.stories.ranking import list_stories, story_list_args  # noqa: E402
from serving.stories.schemas import StoryQuery  # noqa: E402
from serving.stories.store import assign_articles  # noqa: E402
from serving.stories.worker import StoryAssigner  # noqa: E402
from serving.summaries.result_store import ArticleQuery, ResultStore  # noqa: E402
from train.corpus import ensure_lee_corpus  # noqa: E402


def load_avg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


async def sample_feeds(settings: Settings, pool: asyncpg.Pool, embedder: StoryEmbedder) -> dict:
    paths = build_sample_feeds(settings.state_dir)
    specs = [
        FeedSpec(url=p.as_uri(), title=n) for p, (_, n) in zip(paths, SAMPLE_SOURCES, strict=True)
    ]
    await add_feeds(pool, specs, settings)
    poller = Poller(settings, pool=pool)
    await poller.poll_once()
    await poller.close()
    rows = await pool.fetch("SELECT id, guid, title, text FROM articles ORDER BY id")
    articles = [Article(title=r["title"], text=r["text"]) for r in rows]

    embedder.embed(articles[:4])  # load the model outside the timings

    def embed_only() -> float:
        started = time.perf_counter()
        embedder.embed(articles)
        return time.perf_counter() - started

    before_s = embed_only()

    assigner = StoryAssigner(
        pool, settings.model_copy(update={"story_assign_batch": 10_000}), embedder
    )
    started = time.perf_counter()
    report = await assigner.assign_pending()
    assign_s = time.perf_counter() - started
    assert report.assigned == len(rows)
    embed_only_s = min(before_s, embed_only())  # before and after: the load changes

    story = {
        r["article_id"]: r["story_id"]
        for r in await pool.fetch("SELECT article_id, story_id FROM story_articles")
    }
    by_guid = {r["guid"].removeprefix("newsdesk-sample:"): r["id"] for r in rows}
    copies = [g for g in by_guid if g.count("-") == 2]
    found = sum(story[by_guid[g]] == story[by_guid[g.rsplit("-", 1)[0]]] for g in copies)
    originals = [by_guid[g] for g in by_guid if g.count("-") == 1]
    return {
        "articles": len(rows),
        "embed_only_per_s": len(rows) / embed_only_s,
        "group_per_s": len(rows) / assign_s,
        "copies": len(copies),
        "copies_found": found,
        "originals": len(originals),
        "stories_of_originals": len({story[i] for i in originals}),
        "by": dict(report.by),
    }


async def scale(pool: asyncpg.Pool, n_stories: int, rng: np.random.Generator) -> dict:
    """Assign 64 articles against ``n_stories`` live stories (array backend: one read of the
    window per batch) vs the numpy search alone."""
    await pool.execute("TRUNCATE stories CASCADE")
    now = datetime.now(UTC)
    centroids = rng.standard_normal((n_stories, EMBEDDING_DIM)).astype(np.float32)
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    await pool.executemany(
        "INSERT INTO stories (centroid, n_articles, first_published_at, last_published_at) "
        "VALUES ($1::real[], 1, $2, $2)",
        [(c.tolist(), now - timedelta(hours=1)) for c in centroids],
    )
    rows = await pool.fetch(
        "SELECT id, feed_id, title, text, published_at, duplicate_of FROM articles "
        "WHERE id NOT IN (SELECT article_id FROM story_articles) ORDER BY id LIMIT 64"
    )
    if len(rows) < 64:
        await pool.execute("DELETE FROM story_articles")
        rows = await pool.fetch(
            "SELECT id, feed_id, title, text, published_at, duplicate_of FROM articles "
            "ORDER BY id LIMIT 64"
        )
    articles = [Article(id=r["id"], title=r["title"], text=r["text"], published=now) for r in rows]
    vectors = rng.standard_normal((len(articles), EMBEDDING_DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    async with pool.acquire() as conn:
        started = time.perf_counter()
        await assign_articles(conn, articles, vectors, threshold=0.8, window_h=48)
        assign_s = time.perf_counter() - started
    cands = Candidates(
        ids=list(range(n_stories)),
        centroids=centroids,
        first=[now.timestamp()] * n_stories,
        last=[now.timestamp()] * n_stories,
    )
    started = time.perf_counter()
    for v in vectors:
        cands.nearest(v, now.timestamp(), 48 * 3600)
    search_s = time.perf_counter() - started
    await pool.execute(
        "DELETE FROM story_articles WHERE article_id = ANY($1::bigint[])", [a.id for a in articles]
    )
    return {
        "stories": n_stories,
        "assign_ms_per_article": 1000 * assign_s / len(articles),
        "search_ms_per_article": 1000 * search_s / len(articles),
    }


async def reads(pool: asyncpg.Pool, settings: Settings) -> dict:
    store = ResultStore(pool)
    rows = await pool.fetch("SELECT id, feed_id, title, text, published_at FROM articles")
    rng = np.random.default_rng(7)
    for r in rows:  # importance for every article (the read path needs summaries)
        a = Article(
            id=r["id"],
            feed_id=r["feed_id"],
            title=r["title"],
            text=r["text"],
            published=r["published_at"],
        )
        imp = float(rng.uniform(5, 95))
        await store.save(
            a,
            Result(
                article_id=a.id,
                content_hash=a.content_hash,
                summary=a.title or "summary",
                importance=imp,
                importance_parts=ImportanceParts(
                    model=imp, prior=imp, model_weight=0, prior_weight=1
                ),
                topics=["world"],
                model_id="bench",
                prompt_version="bench",
            ),
        )
    since = datetime.now(UTC) - timedelta(hours=24)
    knobs = story_list_args(settings)

    async def timed(call) -> float:  # type: ignore[no-untyped-def]
        samples = []
        for _ in range(30):
            started = time.perf_counter()
            await call()
            samples.append(1000 * (time.perf_counter() - started))
        return statistics.median(samples)

    stories_ms = await timed(lambda: list_stories(pool, StoryQuery(since=since, limit=30), **knobs))
    articles_ms = await timed(
        lambda: store.list_articles(ArticleQuery(since=since, limit=30, half_life_h=24.0))
    )
    return {"stories_p50_ms": stories_ms, "articles_p50_ms": articles_ms}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--window-stories", type=int, nargs="+", default=[1_000, 10_000, 30_000])
    args = parser.parse_args()
    print(f"load average before: {load_avg()}")
    name = f"nd_bench_stories_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(args.dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    state = Path(tempfile.mkdtemp(prefix="bench-stories-"))
    corpus = ensure_lee_corpus(Settings().resolved_state_dir())
    (state / "sample-data").mkdir()
    (state / "sample-data" / corpus.name).write_bytes(corpus.read_bytes())
    settings = Settings(database_url=db.with_database(args.dsn, name), state_dir=state)
    pool = await db.create_pool(settings)
    try:
        embedder = StoryEmbedder()
        s = await sample_feeds(settings, pool, embedder)
        r = await reads(pool, settings)
        rng = np.random.default_rng(0)
        big = [await scale(pool, n, rng) for n in args.window_stories]
    finally:
        await pool.close()
        admin = await asyncpg.connect(args.dsn)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()

    print("\n### Grouping the sample feeds (all 300 Lee articles, 4 outlets)\n")
    print("| | articles/s | ratio |")
    print("|---|---|---|")
    print(f"| embedding alone (baseline) | {s['embed_only_per_s']:.1f} | 1.00 |")
    print(
        f"| grouping: embedding + assignment | {s['group_per_s']:.1f} | "
        f"{s['group_per_s'] / s['embed_only_per_s']:.2f} |"
    )
    print(
        f"\n{s['articles']} articles; planted copies in their original's story: "
        f"{s['copies_found']}/{s['copies']}; the {s['originals']} originals make "
        f"{s['stories_of_originals']} stories; joined by: {s['by']}"
    )
    print("\n### Assignment cost with N stories alive in the window (array backend)\n")
    print("| stories in window | assign ms/article | numpy search alone ms/article | ratio |")
    print("|---|---|---|---|")
    for b in big:
        print(
            f"| {b['stories']:,} | {b['assign_ms_per_article']:.2f} | "
            f"{b['search_ms_per_article']:.3f} | "
            f"{b['assign_ms_per_article'] / max(b['search_ms_per_article'], 1e-9):.0f}x |"
        )
    print("\n### Reads (p50 of 30, limit 30, last 24 h)\n")
    print("| query | p50 ms | ratio |")
    print("|---|---|---|")
    print(f"| GET /v1/articles query (baseline) | {r['articles_p50_ms']:.1f} | 1.00 |")
    print(
        f"| GET /v1/stories query | {r['stories_p50_ms']:.1f} | "
        f"{r['stories_p50_ms'] / r['articles_p50_ms']:.2f} |"
    )
    print(f"\nload average after: {load_avg()}")


if __name__ == "__main__":
    asyncio.run(main())
