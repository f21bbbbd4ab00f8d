"""Serving benchmark: the Serve application over HTTP beside in-process baselines, same run.

    python benchmarks/bench_serve.py            # ~20 min on 2 cores

Starts a private Ray head (free ports, token auth, workers at normal priority, Serve's HAProxy
fast path as documented in serve_config.yaml; ``--default-proxy`` for Serve's Python proxy),
deploys serve_config.yaml (default model, cpu-small) with a fresh database and the loop off:

(a) cache misses: long articles (Lee corpus, full 512-token prompts) POSTed at concurrency 16,
    articles/s, beside ``engine.summarize`` on the same articles in this process;
(b) ``max_batch_size`` 1 (user_config, changed live) vs 8: the Serve speedup beside the
    engine's own batch-8 / one-at-a-time speedup, same articles;
(c) cache hits: p50/p99 latency at concurrency 1 and req/s at concurrency 32 through Serve,
    beside the same API app (serving.http.app + the same cache lookup) on bare Starlette under
    uvicorn in one process. Load from wrk when installed, else an httpx loop.

(a) and (b) alternate Serve and engine in rounds (and which goes first), (c) alternates Serve
and bare, so that load changes on the shared machine fall on both sides alike. Prints each
figure beside its baseline with the ratio, and the load average.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import asyncpg  # noqa: E402
import httpx  # noqa: E402
import yaml  # noqa: E402

from cluster.local_cluster import RayHead, free_port  # noqa: E402
from cluster.sample_data import first_sentence  # noqa: E402
from cluster.settings import Settings  # noqa: E402
from core import db  # noqa: E402
from core.article import Article  # noqa: E402
from serving.deployments.builder import fast_path_env  # noqa: E402
from train.corpus import lee_articles  # noqa: E402


def load_avg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def long_articles(state_dir: Path, count: int, min_chars: int = 3_200) -> list[Article]:
    """``count`` distinct articles that fill the 512-token prompt: consecutive Lee-corpus
    articles joined (as benchmarks/bench_engine.py does), the prompt truncating the rest."""
    texts = lee_articles(state_dir)
    out: list[Article] = []
    i = 0
    while len(out) < count:
        parts: list[str] = []
        while sum(len(p) for p in parts) < min_chars:
            parts.append(texts[i % len(texts)])
            i += 1
        out.append(Article(title=first_sentence(parts[0]), text=" ".join(parts), source="ABC"))
    return out


def body(article: Article) -> dict[str, Any]:
    return article.model_dump(mode="json", exclude={"content_hash"})


# --- load generation ---------------------------------------------------------------------


FAILED_GENERATIONS: list[str] = []
# Result.timings of every model reply, by side: where the time goes (see breakdown()).
TIMINGS: dict[str, list[dict[str, float]]] = {"serve": [], "engine": []}


def breakdown(timings: list[dict[str, float]]) -> str:
    """Batches (articles of one batch share its stage timings) and the seconds of each stage
    summed over batches: the engine's work, wherever it ran."""
    batches = {(t["prefill_ms"], t["generate_ms"], t["importance_ms"]) for t in timings}
    prefill, generate, importance = (sum(b[i] for b in batches) / 1e3 for i in range(3))
    return (
        f"{len(timings)} results in {len(batches)} batches: prefill {prefill:.1f} s, "
        f"generate {generate:.1f} s, importance {importance:.1f} s"
    )


def record(side: str, outcomes: list[Any]) -> None:
    TIMINGS[side].extend(o.timings.model_dump() for o in outcomes if hasattr(o, "timings"))


async def post_all(url: str, articles: list[Article], concurrency: int) -> float:
    """POST every article once, ``concurrency`` at a time; articles/s. Every reply must be a
    Result from the model (a cache miss) or the model's ``generation_failed``."""
    queue: asyncio.Queue[Article] = asyncio.Queue()
    for a in articles:
        queue.put_nowait(a)
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(timeout=1800, limits=limits) as client:

        async def worker() -> None:
            while not queue.empty():
                a = queue.get_nowait()
                r = await client.post(f"{url}/v1/summarize", json=body(a))
                if r.status_code == 200:
                    TIMINGS["serve"].append(r.json()["timings"])
                if r.status_code == 422 and r.json()["error"]["code"] == "generation_failed":
                    FAILED_GENERATIONS.append(a.title)  # the model ran; no usable summary
                elif r.status_code != 200 or r.headers.get("x-cache") != "model":
                    raise RuntimeError(f"{r.status_code} {r.headers.get('x-cache')}: {r.text}")

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return len(articles) / (time.perf_counter() - started)


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def wrk(url: str, payload: dict[str, Any], connections: int, seconds: int) -> dict[str, float]:
    """wrk against POST /v1/summarize: req/s, p50/p99 latency (ms)."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(
            'wrk.method = "POST"\n'
            f"wrk.body = {json.dumps(json.dumps(payload))}\n"
            'wrk.headers["Content-Type"] = "application/json"\n'
        )
    try:
        out = subprocess.run(
            [
                "wrk",
                "-t1",
                f"-c{connections}",
                f"-d{seconds}s",
                "--latency",
                "-s",
                script.name,
                f"{url}/v1/summarize",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    finally:
        os.unlink(script.name)
    if "Non-2xx" in out:
        raise RuntimeError(f"wrk saw errors:\n{out}")
    pct = {
        m.group(1): float(m.group(2)) * _UNITS[m.group(3)]
        for m in re.finditer(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
    }
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    return {"rps": rps, "p50_ms": pct["50"], "p99_ms": pct["99"]}


async def httpx_load(
    url: str, payload: dict[str, Any], connections: int, seconds: int
) -> dict[str, float]:
    latencies: list[float] = []
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=connections)) as client:
        end = time.perf_counter() + seconds

        async def worker() -> None:
            while time.perf_counter() < end:
                t = time.perf_counter()
                r = await client.post(f"{url}/v1/summarize", json=payload)
                r.raise_for_status()
                latencies.append((time.perf_counter() - t) * 1000)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(connections)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "rps": len(latencies) / elapsed,
        "p50_ms": latencies[len(latencies) // 2],
        "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
    }


def hit_load(url: str, payload: dict[str, Any], connections: int, seconds: int) -> dict[str, float]:
    if shutil.which("wrk"):
        return wrk(url, payload, connections, seconds)
    return asyncio.run(httpx_load(url, payload, connections, seconds))


# --- the bare baseline: the same API app in one process, no Ray ----------------------------


def bare_server(port: int, settings_json: str, versions_json: str) -> None:
    """Subprocess entry: serving.http.app over a LocalBackend (same cache lookup) under uvicorn."""
    import uvicorn

    from serving.deployments.local import LocalBackend, local_app
    from serving.model.versions import Versions

    settings = Settings.model_validate_json(settings_json)

    def no_model():  # type: ignore[no-untyped-def]
        raise RuntimeError("the bare baseline answers cache hits only")

    backend = LocalBackend(settings, no_model, versions=Versions(**json.loads(versions_json)))
    uvicorn.run(
        local_app(backend), host="127.0.0.1", port=port, log_level="warning", access_log=False
    )


def wait_http(url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise TimeoutError(url)


# --- main ----------------------------------------------------------------------------------


async def make_db(settings: Settings) -> str:
    server = await db.resolve_database_url(settings)
    name = f"nd_bench_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(server)
    await conn.execute(f'CREATE DATABASE "{name}"')
    await conn.close()
    return db.with_database(server, name)


async def drop_db(url: str) -> None:
    name = url.rsplit("/", 1)[1].split("?")[0]
    conn = await asyncpg.connect(db.with_database(url, "postgres"))
    await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await conn.close()


ACCESS_LOG: bool | None = None  # --access-log on|off overrides serve_config.yaml


def deploy(
    head: RayHead, work: Path, port: int, args: dict[str, Any], user_config: dict[str, Any]
) -> None:
    config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    config["http_options"]["port"] = port
    (app,) = config["applications"]
    app["args"].update(args)
    if ACCESS_LOG is not None:
        app.setdefault("logging_config", {})["enable_access_log"] = ACCESS_LOG
    (summarizer,) = [d for d in app["deployments"] if d["name"] == "Summarizer"]
    summarizer["user_config"].update(user_config)
    path = work / "serve_config.yaml"
    path.write_text(yaml.safe_dump(config))
    head.serve("deploy", str(path))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--articles", type=int, default=32, help="(a): cache-miss articles")
    parser.add_argument("--batch1-articles", type=int, default=8, help="(b): at batch size 1")
    parser.add_argument("--hit-seconds", type=int, default=10, help="(c): seconds per run")
    parser.add_argument("--only-hits", action="store_true", help="skip (a) and (b)")
    parser.add_argument(
        "--serve-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="environment of `ray start` (e.g. RAY_SERVE_THROUGHPUT_OPTIMIZED=1)",
    )
    parser.add_argument(
        "--bare-server", nargs=3, metavar=("PORT", "SETTINGS", "VERSIONS"), help=argparse.SUPPRESS
    )
    parser.add_argument("--access-log", choices=["on", "off"], help="Serve's request log")
    parser.add_argument(
        "--default-proxy",
        action="store_true",
        help="Serve's default Python proxy instead of the HAProxy fast path",
    )
    args = parser.parse_args()
    global ACCESS_LOG
    if args.access_log:
        ACCESS_LOG = args.access_log == "on"
    if args.bare_server:
        bare_server(int(args.bare_server[0]), args.bare_server[1], args.bare_server[2])
        return

    base = Settings()
    state = base.resolved_state_dir()
    database_url = asyncio.run(make_db(base))
    misses = long_articles(state, args.articles + args.batch1_articles)
    set_a, set_b = misses[: args.articles], misses[args.articles :]
    work = Path(tempfile.mkdtemp(prefix="nd-bench-serve-"))
    # Ray starts workers at nice 15; at 0 they compete with this process on equal terms.
    env = {"RAY_worker_niceness": "0"}
    if not args.default_proxy:
        env.update(fast_path_env())
    env.update(dict(e.split("=", 1) for e in args.serve_env))
    head = RayHead(num_cpus=2, env=env)
    bare: subprocess.Popen[bytes] | None = None
    rows: list[tuple[str, str, str, str]] = []
    print(f"load average at start: {load_avg()}", flush=True)
    try:
        head.start()
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        app_args = {
            "state_dir": str(state),
            "database_url": database_url,
            "summarize_loop": False,
            "engine_threads": 2,
        }
        deploy(head, work, port, app_args, {"max_batch_size": 8})
        wait_http(f"{url}/readyz", 600)

        from serving.engine import SummarizeEngine

        if args.only_hits:
            asyncio.run(post_all(url, set_a[:1], 1))  # one miss fills the cache
        else:
            # loaded now, next to the replica's load: both run the same engine code, in
            # micro-batches of Serve's max_batch_size (8), not the profile's 16
            from serving.model.profiles import load_profile

            profile = load_profile("cpu-small").model_copy(update={"max_batch_size": 8})
            engine = SummarizeEngine.load(
                profile, Settings(state_dir=state, engine_threads=2, redis_url=None)
            )
            engine.summarize(set_b[-1:])  # warm-up (first-call allocations)
            # (a) cache misses at concurrency 16 vs the engine on the same articles. Rounds of
            # 16 articles, Serve and engine alternating (and which goes first), so that the
            # shared machine's load changes fall on both alike.
            serve_s = engine_s = 0.0
            for r, start in enumerate(range(0, len(set_a), 16)):
                chunk = set_a[start : start + 16]
                for side in ("serve", "engine") if r % 2 == 0 else ("engine", "serve"):
                    if side == "serve":
                        serve_s += len(chunk) / asyncio.run(post_all(url, chunk, 16))
                    else:
                        started = time.perf_counter()
                        record("engine", engine.summarize(chunk))
                        engine_s += time.perf_counter() - started
                print(
                    f"(a) round {r + 1}: serve {serve_s:.0f} s, engine {engine_s:.0f} s, "
                    f"load {load_avg()}",
                    flush=True,
                )
            serve_a, engine_a = len(set_a) / serve_s, len(set_a) / engine_s
            print(f"(a) generation_failed through Serve: {len(FAILED_GENERATIONS)}", flush=True)
            for side in ("serve", "engine"):
                print(f"(a) {side}: {breakdown(TIMINGS[side])}", flush=True)
                TIMINGS[side].clear()
            rows.append(
                (
                    "(a) cache-miss articles/s, concurrency 16",
                    f"{serve_a:.3f}",
                    f"{engine_a:.3f} (engine in-process)",
                    f"{serve_a / engine_a:.2f}x",
                )
            )

            # (b) max_batch_size 1 (live, through user_config) vs the engine one at a time
            deploy(head, work, port, app_args, {"max_batch_size": 1})
            time.sleep(5)
            serve_s = engine_s = 0.0
            for r, start in enumerate(range(0, len(set_b), 4)):
                chunk = set_b[start : start + 4]
                for side in ("serve", "engine") if r % 2 == 0 else ("engine", "serve"):
                    if side == "serve":
                        serve_s += len(chunk) / asyncio.run(post_all(url, chunk, 16))
                    else:
                        started = time.perf_counter()
                        for a in chunk:
                            record("engine", engine.summarize([a]))
                        engine_s += time.perf_counter() - started
                print(
                    f"(b) round {r + 1}: serve {serve_s:.0f} s, engine {engine_s:.0f} s, "
                    f"load {load_avg()}",
                    flush=True,
                )
            for side in ("serve", "engine"):
                print(f"(b) {side}: {breakdown(TIMINGS[side])}", flush=True)
            serve_b1, engine_b1 = len(set_b) / serve_s, len(set_b) / engine_s
            serve_speedup, engine_speedup = serve_a / serve_b1, engine_a / engine_b1
            rows.append(
                (
                    "(b) articles/s at max_batch_size 1",
                    f"{serve_b1:.3f}",
                    f"{engine_b1:.3f} (engine, one at a time)",
                    f"{serve_b1 / engine_b1:.2f}x",
                )
            )
            rows.append(
                (
                    "(b) speedup batch 8 / batch 1",
                    f"{serve_speedup:.2f}",
                    f"{engine_speedup:.2f} (engine)",
                    f"{serve_speedup / engine_speedup:.2f}x",
                )
            )
            del engine

        # (c) cache hits: Serve vs the same app on bare Starlette, alternating
        # an article the model summarized (one that ended in generation_failed is not cached)
        payload = body(next(a for a in set_a if a.title not in FAILED_GENERATIONS))
        hit = httpx.post(f"{url}/v1/summarize", json=payload, timeout=60)
        assert hit.headers["x-cache"] == "local", hit.headers
        versions = {k: hit.json()[k] for k in ("model_id", "adapter_id", "prompt_version")}
        bare_port = free_port()
        bare_settings = Settings(state_dir=state, database_url=database_url, redis_url=None)
        bare = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--bare-server",
                str(bare_port),
                bare_settings.model_dump_json(),
                json.dumps(versions),
            ],
        )
        bare_url = f"http://127.0.0.1:{bare_port}"
        wait_http(f"{bare_url}/healthz", 60)
        warm = httpx.post(f"{bare_url}/v1/summarize", json=payload, timeout=60)
        assert warm.headers["x-cache"] == "db", warm.text  # Serve's stored Result
        serve_c1 = hit_load(url, payload, 1, args.hit_seconds)
        bare_c1 = hit_load(bare_url, payload, 1, args.hit_seconds)
        bare_c32 = hit_load(bare_url, payload, 32, args.hit_seconds)
        serve_c32 = hit_load(url, payload, 32, args.hit_seconds)
        for label, key, fmt, serve_v, bare_v in (
            ("(c) hit p50 ms, concurrency 1", "p50_ms", ".2f", serve_c1, bare_c1),
            ("(c) hit p99 ms, concurrency 1", "p99_ms", ".2f", serve_c1, bare_c1),
            ("(c) hit req/s, concurrency 32", "rps", ".0f", serve_c32, bare_c32),
            ("(c) hit p99 ms, concurrency 32", "p99_ms", ".1f", serve_c32, bare_c32),
        ):
            rows.append(
                (
                    label,
                    f"{serve_v[key]:{fmt}}",
                    f"{bare_v[key]:{fmt}} (bare)",
                    f"{serve_v[key] / bare_v[key]:.2f}x",
                )
            )
    finally:
        if bare is not None:
            bare.terminate()
            bare.wait(timeout=30)
        head.stop()
        asyncio.run(drop_db(database_url))
        shutil.rmtree(work, ignore_errors=True)

    tool = "wrk" if shutil.which("wrk") else "httpx loop"
    if FAILED_GENERATIONS:
        print(f"{len(FAILED_GENERATIONS)} articles got generation_failed through Serve")
    print(
        f"\nServing benchmark (default model cpu-small, {tool}; load average at end: "
        f"{load_avg()})\n"
    )
    print("| measure | Serve (HTTP) | baseline, same run | ratio |\n|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
