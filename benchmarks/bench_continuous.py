"""Continuous batching against whole batches, same run: the Summarizer under a steady arrival
rate, natural-length summaries.

    python benchmarks/bench_continuous.py                  # ~10 min on 2 cores
    python benchmarks/bench_continuous.py --rates 0.6,1.2 --articles 32

Both sides are the Summarizer deployment's class with its ``@serve.batch`` intake (plain
asyncio, no Ray: the HTTP hops in front of it are the same for both and are measured by
``bench_serve.py``), on one engine (cpu-small, 2 threads), ``max_batch_size`` 8 and a 50 ms
batch wait: ``NEWSDESK_CONTINUOUS_BATCHING`` off (the engine decodes each gathered batch from
its first token to its last; arrivals wait for the running batch) and on (one decode loop,
articles join free slots between steps and leave as they end).

Articles are real ABC news (the Lee corpus, natural lengths, each summary as long as the model
makes it), sent at a steady rate (exponential gaps, a fixed seed) for each ``--rates`` value:
articles/s completed, and the latency from arrival to Result (p50, p99). Static and continuous
alternate at each rate (which goes first too), so that load changes on the shared machine fall
on both alike. Prints each figure beside its static baseline with the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cluster.settings import Settings  # noqa: E402
from core.article import Article  # noqa: E402
from serving.deployments.summarizer import Summarizer  # noqa: E402
from serving.engine import SummarizeEngine  # noqa: E402
from serving.local import replica_context  # noqa: E402
from serving.result import Result  # noqa: E402
from train.corpus import headline, lee_articles  # noqa: E402


def load_avg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def drive(
    summarizer: Summarizer, articles: list[Article], rate: float, seed: int
) -> dict[str, float]:
    """Send ``articles`` at ``rate`` per second; throughput and latencies."""
    rng = random.Random(seed)
    latencies: list[float] = []
    lengths: list[int] = []

    async def one(article: Article) -> None:
        sent = time.perf_counter()
        outcome = await summarizer.summarize(article)
        latencies.append(time.perf_counter() - sent)
        if isinstance(outcome, Result):
            lengths.append(len(outcome.summary))

    started = time.perf_counter()
    tasks = []
    for article in articles:
        tasks.append(asyncio.ensure_future(one(article)))
        await asyncio.sleep(rng.expovariate(rate))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - started
    return {
        "aps": len(articles) / elapsed,
        "p50_s": percentile(latencies, 0.5),
        "p99_s": percentile(latencies, 0.99),
        "mean_summary_chars": statistics.mean(lengths) if lengths else 0.0,
    }


async def main_async(args: argparse.Namespace) -> None:
    settings = Settings(engine_threads=args.threads)
    engine = SummarizeEngine.load(args.profile, settings)
    texts = lee_articles(settings.resolved_state_dir())
    step = max(1, len(texts) // args.articles)
    articles = [
        Article(id=i, title=headline(t), text=t, source="ABC")
        for i, t in enumerate(texts[::step][: args.articles])
    ]
    sides = {
        "static": settings.model_copy(update={"continuous_batching": False}),
        "continuous": settings.model_copy(update={"continuous_batching": True}),
    }
    print(
        f"# continuous batching vs whole batches  {engine.model_id}, {args.threads} threads, "
        f"{len(articles)} Lee articles per run, max_batch_size {args.batch}"
    )
    print(f"load average before: {load_avg()}")
    engine.summarize(articles[:2])  # warm-up
    rows = []
    with replica_context(max_ongoing_requests=4 * args.batch):
        for k, rate in enumerate(float(r) for r in args.rates.split(",")):
            figures: dict[str, dict[str, float]] = {}
            order = ["static", "continuous"] if k % 2 == 0 else ["continuous", "static"]
            for side in order:
                summarizer = Summarizer(args.profile, sides[side], engine=engine)
                await summarizer.reconfigure(
                    {"max_batch_size": args.batch, "batch_wait_timeout_s": 0.05}
                )
                try:
                    figures[side] = await drive(summarizer, articles, rate, seed=k)
                finally:
                    summarizer.close()
            rows.append({"rate": rate, **figures})
    print(
        "\n| arrivals/s | static art/s | continuous art/s | ratio | static p50 s | "
        "continuous p50 s | p50 ratio | static p99 s | continuous p99 s | p99 ratio |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        s, c = row["static"], row["continuous"]
        print(
            f"| {row['rate']:g} | {s['aps']:.2f} | {c['aps']:.2f} | {c['aps'] / s['aps']:.2f}x "
            f"| {s['p50_s']:.1f} | {c['p50_s']:.1f} | {c['p50_s'] / s['p50_s']:.2f}x "
            f"| {s['p99_s']:.1f} | {c['p99_s']:.1f} | {c['p99_s'] / s['p99_s']:.2f}x |"
        )
    print(f"\nload average after: {load_avg()}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", default="cpu-small")
    parser.add_argument("--articles", type=int, default=40)
    parser.add_argument("--rates", default="0.8,1.5,4", help="arrivals per second, comma list")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
