"""Continuous batching against whole batches, same run: the Summarizer under a steady arrival
rate, natural-length summaries.

    python benchmarks/bench_continuous.py                  # ~10 min on 2 cores
    python benchmarks/bench_continuous.py --rates 0.6,1.2 --articles 32
    python benchmarks/bench_continuous.py --through-serve --static-waits 0.05   # ~10 min

Both sides are the Summarizer deployment's class with its ``@serve.batch`` intake (plain
asyncio, no Ray: the HTTP hops in front of it are the same for both and are measured by
``bench_serve.py``), each loading its engine on its own engine thread as a replica does
(cpu-small, 2 threads; torch's OpenMP pool belongs to the thread that uses it, so an engine
shared by Summarizers of several threads would measure thread contention), ``max_batch_size``
8 and a 50 ms batch wait: ``NEWSDESK_CONTINUOUS_BATCHING`` off (the engine decodes each
gathered batch from its first token to its last; arrivals wait for the running batch) and on
(one decode loop, articles join free slots between steps and leave as they end).

``--through-serve``: each side as users run it instead: ``serve deploy`` of serve_config.yaml on
a private Ray head (``continuous_batching`` in the app's ``settings``, the wait in user_config),
a fresh database and fresh replicas per side, the articles POSTed to ``/v1/summarize`` over HTTP
(every reply a cache miss), a set of articles of their own per rate; the sides run one after
the other (a deploy each), not alternating.

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
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from benchmarks.bench_serve import body  # noqa: E402
from cluster.settings import Settings  # noqa: E402
from core.article import Article  # noqa: E402
from serving.deployments.local import replica_context  # noqa: E402
from serving.deployments.summarizer import Summarizer  # noqa: E402
from serving.model.result import Result  # noqa: E402
from train.corpus import headline, lee_articles  # noqa: E402


def load_avg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def drive(
    send: Callable[[Article], Awaitable[int | None]],
    articles: list[Article],
    rate: float,
    seed: int,
) -> dict[str, float]:
    """Send ``articles`` at ``rate`` per second (``send``: one article to its Result, the
    summary's length, None without one); throughput and latencies."""
    rng = random.Random(seed)
    latencies: list[float] = []
    lengths: list[int] = []

    async def one(article: Article) -> None:
        sent = time.perf_counter()
        length = await send(article)
        latencies.append(time.perf_counter() - sent)
        if length is not None:
            lengths.append(length)

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


def in_process(summarizer: Summarizer) -> Callable[[Article], Awaitable[int | None]]:
    async def send(article: Article) -> int | None:
        outcome = await summarizer.summarize(article)
        return len(outcome.summary) if isinstance(outcome, Result) else None

    return send


def over_http(client: httpx.AsyncClient, url: str) -> Callable[[Article], Awaitable[int | None]]:
    """POST to ``/v1/summarize``; every reply must come from the model (a cache miss, or
    coalesced with one)."""

    async def send(article: Article) -> int | None:
        reply = await client.post(f"{url}/v1/summarize", json=body(article))
        # "coalesced": a copy of an article in flight (the corpus repeats a few) waited for it
        if reply.status_code == 200 and reply.headers.get("x-cache") in ("model", "coalesced"):
            return len(reply.json()["summary"])
        if reply.status_code == 422 and "generation_failed" in reply.text:
            return None
        raise RuntimeError(f"{reply.status_code} {reply.headers.get('x-cache')}: {reply.text}")

    return send


def through_serve(
    args: argparse.Namespace,
    settings: Settings,
    articles: list[Article],
    warm: Article,
    sides: dict[str, tuple[bool, float]],
) -> list[dict]:
    """Each side as users run it: a private Ray head, ``serve deploy`` of serve_config.yaml
    with the side's ``continuous_batching`` (under the app's ``settings``) and batch wait
    (user_config), a fresh database (no stored Result to hit) and fresh replicas (no cached
    one), articles POSTed over HTTP at each rate, a set of ``args.articles`` of their own per
    rate."""
    import shutil
    import tempfile

    from benchmarks.bench_serve import deploy, drop_db, make_db, wait_http
    from cluster.local_cluster import RayHead, free_port
    from serving.deployments.builder import fast_path_env

    state = settings.resolved_state_dir()
    work = Path(tempfile.mkdtemp(prefix="nd-bench-continuous-"))
    head = RayHead(num_cpus=2, env={"RAY_worker_niceness": "0", **fast_path_env()})
    rates = [float(r) for r in args.rates.split(",")]
    figures: dict[float, dict[str, dict[str, float]]] = {rate: {} for rate in rates}
    try:
        head.start()
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        for side, (continuous, wait) in sides.items():
            database_url = asyncio.run(make_db(settings))
            try:
                app_args = {
                    "state_dir": str(state),
                    "database_url": database_url,
                    "summarize_loop": False,
                    "engine_threads": args.threads,
                    "settings": {"continuous_batching": continuous},
                }
                user_config = {"max_batch_size": args.batch, "batch_wait_timeout_s": wait}
                deploy(head, work, port, app_args, user_config)
                _wait_deployed(head)
                wait_http(f"{url}/readyz", 600)
                for k, rate in enumerate(rates):
                    # a set of articles of its own per rate (a second send would be a cache
                    # hit), the same sets for every side
                    batch = articles[k * args.articles : (k + 1) * args.articles]
                    figures[rate][side] = asyncio.run(_serve_side(url, warm, batch, rate, k))
                    print(f"rate {rate:g} {side}: {figures[rate][side]}", flush=True)
            finally:
                asyncio.run(drop_db(database_url))
    finally:
        head.stop()
        shutil.rmtree(work, ignore_errors=True)
    return [{"rate": rate, **figures[rate]} for rate in rates]


def _wait_deployed(head: Any, timeout_s: float = 600) -> None:
    """Until the config just deployed runs: the application RUNNING with every deployment
    HEALTHY (a redeploy with other args replaces every replica; the previous side's must not
    answer this side's requests)."""
    import yaml

    time.sleep(5)  # the controller takes the new config first
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = yaml.safe_load(head.serve("status").stdout)
        (app,) = status["applications"].values()
        deployments = app.get("deployments", {}).values()
        if app["status"] == "RUNNING" and all(d["status"] == "HEALTHY" for d in deployments):
            return
        time.sleep(2)
    raise TimeoutError("the application did not reach RUNNING")


async def _serve_side(
    url: str, warm: Article, articles: list[Article], rate: float, seed: int
) -> dict[str, float]:
    async with httpx.AsyncClient(timeout=1800) as client:
        reply = await client.post(f"{url}/v1/summarize", json=body(warm))  # the replica warm
        reply.raise_for_status()
        return await drive(over_http(client, url), articles, rate, seed)


def print_table(rows: list[dict], sides: dict[str, tuple[bool, float]]) -> None:
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


async def main_async(args: argparse.Namespace) -> None:
    settings = Settings(engine_threads=args.threads)
    texts = lee_articles(settings.resolved_state_dir())
    count = args.articles * (len(args.rates.split(",")) if args.through_serve else 1)
    step = max(1, len(texts) // count)
    articles = [
        Article(id=i, title=headline(t), text=t, source="ABC")
        for i, t in enumerate(texts[::step][:count])
    ]
    # name -> (continuous batching, @serve.batch wait): today's static batches with the
    # shipped 50 ms wait, and with a longer wait that lets more arrivals share a batch
    sides = {
        f"static {w:g} s": (False, w) for w in (float(x) for x in args.static_waits.split(","))
    }
    sides["continuous"] = (True, 0.05)
    print(
        f"# continuous batching vs whole batches  {args.profile}, {args.threads} threads, "
        f"{args.articles} Lee articles per run, max_batch_size {args.batch}"
    )
    print(f"load average before: {load_avg()}")
    if args.through_serve:
        warm = Article(title=headline(texts[1]), text=texts[1], source="ABC")
        rows = await asyncio.to_thread(through_serve, args, settings, articles, warm, sides)
        print_table(rows, sides)
        print(f"\nload average after: {load_avg()}")
        if args.json:
            args.json.write_text(json.dumps(rows, indent=2))
        return
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
                    figures[side] = await drive(in_process(summarizer), articles, rate, seed=k)
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
    print_table(rows, sides)
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
    parser.add_argument(
        "--through-serve",
        action="store_true",
        help="each side deployed with `serve deploy` on a private Ray head, articles over HTTP",
    )
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
