"""Continuous batching against whole batches, same run: the Summarizer under a steady arrival
rate, natural-length summaries.

    python benchmarks/bench_continuous.py                  # ~10 min on 2 cores
    python benchmarks/bench_continuous.py --rates 0.6,1.2 --articles 32

Both sides are the Summarizer deployment's class with its ``@serve.batch`` intake (plain
asyncio, no Ray: the HTTP hops in front of it are the same for both and are measured by
``bench_serve.py``), each loading its engine on its own engine thread as a replica does
(cpu-small, 2 threads; torch's OpenMP pool belongs to the thread that uses it, so an engine
shared by Summarizers of several threads would measure thread contention), ``max_batch_size``
8 and a 50 ms batch wait: ``NEWSDESK_CONTINUOUS_BATCHING`` off (the engine decodes each
gathered batch from its first token to its last; arrivals wait for the running batch) and on
(one decode loop, articles join free slots between steps and leave as they end).

Articles are real ABC news (the Lee corpus, natural lengths, each summary as long as the model
makes it), sent at a steady rate (exponential gaps, a fixed seed) for each ``--rates`` value:
articles/s completed, and the latency from arrival to Result (p50, p99). The sides alternate
at each rate (their order too), so that load changes on the shared machine fall on all alike.
Prints each figure with continuous batching's ratio to it, and each side's intake batch sizes
(Ray 2.60's ``@serve.batch`` forms a batch when its wait ends, not when the engine is free: under
a steady rate whole batches stay small, which a longer wait only partly helps).
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
    texts = lee_articles(settings.resolved_state_dir())
    step = max(1, len(texts) // args.articles)
    articles = [
        Article(id=i, title=headline(t), text=t, source="ABC")
        for i, t in enumerate(texts[::step][: args.articles])
    ]
    # name -> (continuous batching, @serve.batch wait): today's static batches with the
    # shipped 50 ms wait, and with a longer wait that lets more arrivals share a batch
    sides = {
        f"static {w:g} s": (False, w) for w in (float(x) for x in args.static_waits.split(","))
    }
    sides["continuous"] = (True, 0.05)
    print(
        f"# continuous batching vs whole batches  {args.profile}, {args.threads} threads, "
        f"{len(articles)} Lee articles per run, max_batch_size {args.batch}"
    )
    print(f"load average before: {load_avg()}")
    rows = []
    with replica_context(max_ongoing_requests=4 * args.batch):
        for k, rate in enumerate(float(r) for r in args.rates.split(",")):
            figures: dict[str, dict[str, float]] = {}
            order = list(sides) if k % 2 == 0 else list(reversed(sides))
            for side in order:
                continuous, wait = sides[side]
                side_settings = settings.model_copy(update={"continuous_batching": continuous})
                summarizer = await asyncio.to_thread(Summarizer, args.profile, side_settings)
                await summarizer.reconfigure(
                    {"max_batch_size": args.batch, "batch_wait_timeout_s": wait}
                )
                await summarizer.summarize(articles[-1])  # warm-up on its engine thread
                try:
                    figures[side] = await drive(summarizer, articles, rate, seed=k)
                finally:
                    summarizer.close()
                info = summarizer.info()
                fill = info["continuous"]["active_rows_per_step"] if info["continuous"] else None
                print(
                    f"rate {rate:g} {side}: intake batch sizes {info['batch_size_histogram']}"
                    + (f", active rows per decode step {fill}" if fill else ""),
                    flush=True,
                )
            rows.append({"rate": rate, **figures})
    print(
        "\n| arrivals/s | side | art/s | continuous / it | p50 s | p50 ratio | p99 s | p99 ratio |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        c = row["continuous"]
        for side in sides:
            f = row[side]
            print(
                f"| {row['rate']:g} | {side} | {f['aps']:.2f} | {c['aps'] / f['aps']:.2f}x "
                f"| {f['p50_s']:.1f} | {c['p50_s'] / f['p50_s']:.2f}x | {f['p99_s']:.1f} "
                f"| {c['p99_s'] / f['p99_s']:.2f}x |"
            )
    print(f"\nload average after: {load_avg()}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", default="cpu-small")
    parser.add_argument("--articles", type=int, default=24)
    parser.add_argument("--rates", default="1,3", help="arrivals per second, comma list")
    parser.add_argument(
        "--static-waits", default="0.05,0.5", help="@serve.batch waits of the static sides"
    )
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
