"""Search: ``GET /v1/search``'s query on a day's load of stored articles, beside the
``GET /v1/articles`` listing with the same window and page size, in the same run.

    python benchmarks/bench_search.py                  # PostgreSQL on 127.0.0.1:5432
    python benchmarks/bench_search.py --articles 30000 --runs 60 --dsn postgresql://...

1. Load: ``--articles`` synthetic articles published over the last 24 hours (a day's load),
   each 4-10 sentences drawn from the Lee corpus (real news prose, train/corpus.py) with a
   title made from its first words, 20 sources; 80% with a Result (a two-sentence summary, an
   importance, topics) as the loop stores them, the rest waiting. Inserted with COPY; the
   time is printed beside the same COPY into a table without the search columns (what the
   generated tsvector and its GIN index cost ingestion).
2. Queries: several representative queries (a rare word, a common word, two words, a phrase,
   OR, an exclusion, with a filter, no match) through ``serving.search.store.search`` (the
   route's SQL, highlighted snippets included), since = 24 h ago, limit 20: p50 and p99 over
   ``--runs`` calls each. Baseline: ``ResultStore.list_articles`` (the /v1/articles query) with
   the same since and limit. Timed in rounds (the baseline and every query once a round), so
   a change of load during the run weighs on all alike. Ratios are search / baseline.
3. ``EXPLAIN ANALYZE`` of one search: the GIN indexes at work.
4. Configurations: hits of a few queries under 'simple', 'english' and migration 007's
   ``newsdesk_search`` (English after unaccent) over the same articles.

Uses a fresh database on the server (dropped afterwards). The load average is printed before
and after: the CPUs are shared and figures under load are not comparable.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import asyncpg  # noqa: E402

from benchmarks.scratch_db import scratch_database  # noqa: E402
from cluster.settings import Settings  # noqa: E402
from core import db  # noqa: E402
from core.article import content_hash  # noqa: E402
from serving.model.result import ImportanceParts, Result  # noqa: E402
from serving.search.schemas import SearchQuery  # noqa: E402
from serving.search.store import (  # noqa: E402
    SEARCH_SQL,
    TS_CONFIG,
    Search,
    search,
    search_args,
)
from serving.summaries.result_store import ArticleQuery, ResultStore  # noqa: E402
from train.corpus import lee_articles  # noqa: E402

SOURCES = [f"Outlet {i:02d}" for i in range(20)]
TOPICS = ["politics", "world", "business", "sport", "science", "health", "weather", "crime"]
QUERIES = [
    ("rare word", "bushfire", {}),
    ("common word", "government", {}),
    ("two words", "security council", {}),
    ("phrase", '"prime minister"', {}),
    ("OR", "storm OR flood OR fire", {}),
    ("exclusion", "israeli -palestinian", {}),
    ("word + min_importance 60", "police", {"min_importance": 60}),
    ("no match", "zeppelin", {}),
]
CONFIG_QUERIES = ["fire", "fires", "firefighters", "minister", "talks", "Afghan"]


def load_avg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def sentences(state_dir: Path) -> list[str]:
    out = []
    for text in lee_articles(state_dir):
        out += [s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if len(s.split()) >= 5]
    return out


def synthetic(n: int, pool: list[str], rng: random.Random) -> list[dict]:
    now = datetime.now(UTC)
    rows = []
    for i in range(n):
        body = rng.sample(pool, rng.randint(4, 10))
        title = " ".join(body[0].split()[:9]).rstrip(",.;:")
        text = " ".join(body)
        rows.append(
            {
                "title": title,
                "text": text,
                "summary": " ".join(body[:2]) if rng.random() < 0.8 else None,
                "importance": round(rng.uniform(0, 100), 1),
                "topics": rng.sample(TOPICS, rng.randint(1, 3)),
                "source": SOURCES[i % len(SOURCES)],
                "published": now - timedelta(seconds=rng.uniform(0, 86_000)),
                "hash": content_hash(title, f"{text} #{i}"),
            }
        )
    return rows


ARTICLE_COLS = ["feed_id", "dedup_key", "title", "text", "language", "content_hash"]
ARTICLE_COLS += ["published_at", "source"]


def article_records(feed_id: int, rows: list[dict]) -> list[tuple]:
    return [
        (feed_id, f"k{i}", r["title"], r["text"], "en", r["hash"], r["published"], r["source"])
        for i, r in enumerate(rows)
    ]


async def load(pool: asyncpg.Pool, rows: list[dict]) -> dict[str, float]:
    """COPY the articles (timed beside the same COPY into a plain copy of the table), then
    their Results."""
    async with pool.acquire() as conn:
        feed_id = await conn.fetchval(
            "INSERT INTO feeds (url, title) VALUES ('https://bench.test/feed', 'Bench') "
            "RETURNING id"
        )
        # the same table without the search index, and without the column too
        await conn.execute(
            "CREATE TABLE tsv_articles (LIKE articles INCLUDING DEFAULTS INCLUDING GENERATED); "
            "CREATE INDEX ON tsv_articles (published_at DESC); "
            "CREATE TABLE plain_articles (LIKE articles INCLUDING DEFAULTS); "
            "ALTER TABLE plain_articles DROP COLUMN search_tsv; "
            "CREATE INDEX ON plain_articles (published_at DESC)"
        )
        records = article_records(feed_id, rows)
        took = {}
        for table in ("plain_articles", "tsv_articles", "articles"):
            started = time.perf_counter()
            await conn.copy_records_to_table(table, records=records, columns=ARTICLE_COLS)
            took[table] = time.perf_counter() - started
        await conn.execute("DROP TABLE plain_articles, tsv_articles")
        ids = {
            r["content_hash"]: r["id"]
            for r in await conn.fetch("SELECT id, content_hash FROM articles")
        }
        results = []
        for r in rows:
            if r["summary"] is None:
                continue
            result = Result(
                article_id=ids[r["hash"]],
                content_hash=r["hash"],
                summary=r["summary"][:2000],
                importance=r["importance"],
                importance_parts=ImportanceParts(
                    model=r["importance"],
                    prior=r["importance"],
                    model_weight=0.5,
                    prior_weight=0.5,
                ),
                topics=r["topics"],
                model_id="bench-model",
                prompt_version="bench-v1",
            )
            results.append(
                (
                    ids[r["hash"]],
                    r["hash"],
                    "bench-model",
                    "bench-v1",
                    "ok",
                    result.summary,
                    result.importance,
                    result.topics,
                    result.model_dump_json(),
                )
            )
        await conn.copy_records_to_table(
            "results",
            records=results,
            columns=[
                "article_id",
                "content_hash",
                "model_id",
                "prompt_version",
                "status",
                "summary",
                "importance",
                "topics",
                "result",
            ],
        )
        for table in ("articles", "results"):
            await conn.execute(f"VACUUM ANALYZE {table}")
    return {
        "plain_copy_s": took["plain_articles"],
        "tsv_copy_s": took["tsv_articles"],
        "search_copy_s": took["articles"],
        "results": len(results),
    }


async def timed(calls: dict[str, Callable[[], Awaitable[object]]], runs: int) -> dict:
    """p50 and p99 (ms) of each call, measured in rounds (every call once per round, in
    turn), so a change of the machine's load during the run weighs on all of them alike."""
    for call in calls.values():
        for _ in range(3):
            await call()  # warm: plans, caches
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(runs):
        for name, call in calls.items():
            started = time.perf_counter()
            await call()
            samples[name].append((time.perf_counter() - started) * 1000)
    out = {}
    for name, values in samples.items():
        values.sort()
        p99 = values[min(len(values) - 1, round(0.99 * (len(values) - 1)))]
        out[name] = (statistics.median(values), p99)
    return out


async def explain(pool: asyncpg.Pool, request: Search) -> list[str]:
    args = search_args(request, limit=request.query.limit, offset=0)
    rows = await pool.fetch("EXPLAIN (ANALYZE, COSTS OFF) " + SEARCH_SQL, *args)
    return [r[0] for r in rows]


async def configs(pool: asyncpg.Pool, sample: int) -> list[tuple[str, dict[str, int]]]:
    out = []
    for q in CONFIG_QUERIES:
        counts = {}
        for cfg in ("simple", "english", TS_CONFIG):
            counts[cfg] = await pool.fetchval(
                f"""SELECT count(*) FROM (SELECT title, text FROM articles ORDER BY id LIMIT $2) a
                    WHERE to_tsvector('{cfg}', a.title || ' ' || a.text)
                          @@ websearch_to_tsquery('{cfg}', $1)""",
                q,
                sample,
            )
        out.append((q, counts))
    return out


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--articles", type=int, default=30_000)
    parser.add_argument("--runs", type=int, default=60)
    parser.add_argument("--limit", type=int, default=20)
    parser.add_argument("--config-sample", type=int, default=3_000)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    print(f"load average before: {load_avg()}")
    async with scratch_database(args.dsn, "nd_bench_search") as dsn:
        pool = await db.create_pool(Settings(database_url=dsn))
        try:
            rng = random.Random(0)
            rows = synthetic(args.articles, sentences(Settings().resolved_state_dir()), rng)
            loaded = await load(pool, rows)
            store = ResultStore(pool)
            since = datetime.now(UTC) - timedelta(hours=24)
            calls: dict[str, Callable[[], Awaitable[object]]] = {
                "baseline": lambda: store.list_articles(ArticleQuery(since=since, limit=args.limit))
            }
            totals = {}
            for label, q, extra in QUERIES:
                request = Search(SearchQuery(q=q, since=since, limit=args.limit, **extra))
                totals[label] = (await search(pool, request)).total
                calls[label] = lambda r=request: search(pool, r)
            times = await timed(calls, args.runs)
            baseline = times["baseline"]
            measured = [(label, q, totals[label], *times[label]) for label, q, _ in QUERIES]
            plan = await explain(pool, Search(SearchQuery(q="security council", since=since)))
            per_config = await configs(pool, args.config_sample)
        finally:
            await pool.close()

    print(f"\n### Load: {args.articles:,} articles over 24 h, {loaded['results']:,} summarized\n")
    plain = loaded["plain_copy_s"]
    print("| COPY of the articles | s | ms/article | ratio |")
    print("|---|---|---|---|")
    for label, key in (
        ("into a table without the search column (baseline)", "plain_copy_s"),
        ("with the generated tsvector, no GIN index", "tsv_copy_s"),
        ("into `articles` (generated tsvector + GIN index)", "search_copy_s"),
    ):
        secs = loaded[key]
        print(f"| {label} | {secs:.2f} | {secs * 1000 / args.articles:.3f} | {secs / plain:.2f} |")

    b50, b99 = baseline
    print(
        f"\n### Queries: since 24 h ago, limit {args.limit}, {args.runs} rounds "
        "(each query and the baseline once a round)\n"
    )
    print("| query | q | hits | p50 ms | p99 ms | p50 ratio | p99 ratio |")
    print("|---|---|---|---|---|---|---|")
    print(f"| /v1/articles listing (baseline) | | | {b50:.1f} | {b99:.1f} | 1.00 | 1.00 |")
    for label, q, total, p50, p99 in measured:
        print(
            f"| {label} | `{q}` | {total:,} | {p50:.1f} | {p99:.1f} | {p50 / b50:.2f} | "
            f"{p99 / b99:.2f} |"
        )

    print("\n### EXPLAIN ANALYZE, q = security council\n")
    print("```")
    print("\n".join(plan))
    print("```")
    used = [
        i
        for i in ("articles_search_idx", "results_summary_search_idx")
        if any(i in line for line in plan)
    ]
    print(f"GIN indexes used: {', '.join(used) or 'NONE'}")

    print(f"\n### Hits per text search configuration ({args.config_sample:,} articles)\n")
    print(f"| q | simple | english | {TS_CONFIG} |")
    print("|---|---|---|---|")
    for q, counts in per_config:
        print(f"| `{q}` | {counts['simple']} | {counts['english']} | {counts[TS_CONFIG]} |")
    print(f"\nload average after: {load_avg()}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "load": loaded,
                    "baseline_ms": {"p50": b50, "p99": b99},
                    "queries": [
                        {"label": la, "q": q, "hits": t, "p50_ms": a, "p99_ms": b}
                        for la, q, t, a, b in measured
                    ],
                    "indexes_used": used,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    asyncio.run(main())
