"""Ingestion benchmark: 1,000 feeds x 20 entries from a local HTTP server.

    python benchmarks/bench_ingest.py [--feeds 1000] [--entries 20] [--dsn postgresql://...]

Measures, in one run:
1. the ceiling: feedparser's own parse rate (entries/s) on the very bytes the server sends,
   in this process, one feed after another (``feedparser.parse(bytes)``, defaults);
2. the first poll: articles stored per second by ``poll_once`` (fetch over HTTP, parse,
   normalize, HTML -> text, batch insert, duplicate marking, feed state), 1,000 feeds due;
3. the re-poll: seconds to poll all 1,000 feeds again when every one answers 304.
and prints them side by side, as ratios to the ceiling and to the targets (>= 1,000
articles/s stored; re-poll <= 10 s).

The HTTP server is a separate process (asyncio, keep-alive, ETag/304), so it does not share
the poller's GIL; it listens on 8 loopback addresses, so the feeds spread over 8 "hosts" and
the default per-host limit applies as it would to real feeds. PostgreSQL: ``--dsn`` (a
server; a fresh database is created on it and dropped afterwards), else
``NEWSDESK_TEST_DATABASE_URL``, else the local server on 127.0.0.1:5432.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import multiprocessing
import os
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from xml.sax.saxutils import escape

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncpg
import feedparser

from cluster.settings import Settings
from core import db
from ingestion import store
from ingestion.poll_loop import poll_once

HOSTS = [f"127.0.0.{i}" for i in range(1, 9)]
LOCAL_PG = "postgresql://postgres@127.0.0.1:5432/postgres"

WORDS = (
    "government minister said on Tuesday that the new policy would take effect next month "
    "after parliament approved the budget despite protests from opposition parties and "
    "unions who warned of rising costs for households across the country while economists "
    "expected growth to slow"
).split()


def feed_document(feed: int, entries: int) -> bytes:
    """A realistic RSS 2.0 feed: summary + content:encoded HTML (~1.5 KB per entry)."""
    base = datetime(2025, 6, 10, tzinfo=UTC)
    items = []
    for e in range(entries):
        n = feed * entries + e
        words = [WORDS[(n * 7 + k) % len(WORDS)] for k in range(40)]
        para = " ".join(words).capitalize() + "."
        body = (
            f"<p>{para}</p><p>{para.upper()[:120].capitalize()} <b>{n}</b>.</p>"
            f"<figure><img src='https://cdn.example/{n}.jpg'><figcaption>Photo {n}</figcaption>"
            f"</figure><p>{para} <a href='https://news.example/{n}'>More</a></p>"
            "<script>track()</script>"
        )
        pub = format_datetime(base - timedelta(minutes=n % 10_000), usegmt=True)
        items.append(
            f"<item><title>Story {n}: {escape(' '.join(words[:8]))}</title>"
            f"<link>https://news{feed % 50}.example/story/{n}?utm_source=rss</link>"
            f'<guid isPermaLink="false">bench-{n}</guid><pubDate>{pub}</pubDate>'
            f"<author>desk{feed % 7}@news.example (Desk {feed % 7})</author>"
            f"<description>{escape('<p>' + para + '</p>')}</description>"
            f"<content:encoded><![CDATA[{body}]]></content:encoded></item>"
        )
    doc = (
        '<?xml version="1.0" encoding="utf-8"?>\n'
        '<rss version="2.0" xmlns:content="http://purl.org/rss/1.0/modules/content/">'
        f"<channel><title>Bench feed {feed}</title><link>https://news{feed}.example/</link>"
        f"<description>Benchmark</description><language>en-gb</language>"
        + "".join(items)
        + "</channel></rss>\n"
    )
    return doc.encode("utf-8")


# --- the HTTP server (a separate process) --------------------------------------------------------


def serve(bodies: list[bytes], port: int, ready: multiprocessing.synchronize.Event) -> None:  # type: ignore[name-defined]
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    etags = [f'"{hashlib.sha1(b).hexdigest()[:16]}"'.encode() for b in bodies]

    class Http(asyncio.Protocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            self.transport = transport
            self.buffer = b""

        def data_received(self, data: bytes) -> None:
            self.buffer += data
            while b"\r\n\r\n" in self.buffer:
                head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
                lines = head.split(b"\r\n")
                path = lines[0].split(b" ")[1]
                inm = b""
                for line in lines[1:]:
                    if line[:14].lower() == b"if-none-match:":
                        inm = line[14:].strip()
                try:
                    i = int(path.rsplit(b"/", 1)[1].split(b".")[0])
                    body, etag = bodies[i], etags[i]
                except (ValueError, IndexError):
                    self.transport.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                    continue
                if inm == etag:
                    self.transport.write(
                        b"HTTP/1.1 304 Not Modified\r\nETag: " + etag + b"\r\n\r\n"
                    )
                else:
                    self.transport.write(
                        b"HTTP/1.1 200 OK\r\nContent-Type: application/rss+xml; charset=utf-8\r\n"
                        b"ETag: "
                        + etag
                        + b"\r\nContent-Length: "
                        + str(len(body)).encode()
                        + b"\r\n\r\n"
                        + body
                    )

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for host in HOSTS:
            await loop.create_server(Http, host, port, backlog=1024)
        ready.set()
        await asyncio.Event().wait()

    asyncio.run(main())


# --- measurements --------------------------------------------------------------------------


def ceiling(bodies: list[bytes], **options: bool) -> tuple[float, float]:
    """feedparser alone on the same bytes: (entries/s, seconds)."""
    started = time.perf_counter()
    n = 0
    for body in bodies:
        n += len(feedparser.parse(io.BytesIO(body), **options).entries)
    elapsed = time.perf_counter() - started
    return n / elapsed, elapsed


async def bench(args: argparse.Namespace) -> dict[str, float]:
    server_dsn = args.dsn or os.environ.get("NEWSDESK_TEST_DATABASE_URL") or LOCAL_PG
    name = f"nd_bench_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(server_dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    dsn = db.with_database(server_dsn, name)
    settings = Settings(
        database_url=dsn,
        allow_loopback=True,
        parse_workers=args.parse_workers,
        db_pool_max=8,
    )
    pool = await db.create_pool(settings)
    try:
        for i in range(args.feeds):
            host = HOSTS[i % len(HOSTS)]
            await store.add_feed(pool, f"http://{host}:{args.port}/feed/{i}.xml", interval_s=900)
        first = await poll_once(pool, settings)
        stored = await pool.fetchval("SELECT count(*) FROM articles")
        assert first.feeds_ok == args.feeds, first.as_dict()
        assert stored == args.feeds * args.entries == first.new, (stored, first.new)
        await store.make_due(pool)
        again = await poll_once(pool, settings)
        assert again.feeds_not_modified == args.feeds, again.as_dict()
        return {
            "first_s": first.elapsed_s,
            "articles_per_s": first.new / first.elapsed_s,
            "repoll_s": again.elapsed_s,
        }
    finally:
        await pool.close()
        admin = await asyncpg.connect(server_dsn)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--feeds", type=int, default=1000)
    parser.add_argument("--entries", type=int, default=20)
    parser.add_argument("--port", type=int, default=18_431)
    parser.add_argument("--dsn", help="PostgreSQL server DSN (a scratch database is made on it)")
    parser.add_argument(
        "--parse-workers", type=int, default=0, help="NEWSDESK_PARSE_WORKERS for the poller"
    )
    args = parser.parse_args()

    bodies = [feed_document(i, args.entries) for i in range(args.feeds)]
    size = sum(map(len, bodies))
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    server = ctx.Process(target=serve, args=(bodies, args.port, ready), daemon=True)
    server.start()
    try:
        if not ready.wait(30):
            raise SystemExit("the feed server did not start")
        default_rate, default_s = ceiling(bodies)
        # What the poller asks of feedparser: no HTML sanitising, no URI rewriting.
        ceil_rate, ceil_s = ceiling(bodies, sanitize_html=False, resolve_relative_uris=False)
        try:
            import uvloop

            uvloop.install()
        except ImportError:
            pass
        r = asyncio.run(bench(args))
    finally:
        server.terminate()
        server.join(5)

    entries = args.feeds * args.entries
    print(
        f"\ningestion benchmark: {args.feeds} feeds x {args.entries} entries "
        f"({size / 1e6:.1f} MB of RSS), {os.cpu_count()} CPUs, parse_workers={args.parse_workers}"
    )
    print(f"{'measure':<52}{'value':>12}  ratio")
    print(
        f"{'feedparser alone, defaults':<52}{default_rate:>9.0f}/s "
        f"{default_rate / ceil_rate:>8.2f} ({default_s:.1f} s for {entries})"
    )
    print(
        f"{'feedparser alone, as the poller calls it (ceiling)':<52}{ceil_rate:>9.0f}/s "
        f"{1:>8.2f} ({ceil_s:.1f} s for {entries})"
    )
    print(
        f"{'first poll: articles stored':<52}{r['articles_per_s']:>9.0f}/s "
        f"{r['articles_per_s'] / ceil_rate:>8.2f} of ceiling, "
        f"{r['articles_per_s'] / 1000:.2f}x target"
    )
    print(f"{'  (wall time of the first poll)':<52}{r['first_s']:>10.1f} s")
    print(
        f"{'re-poll, every feed 304':<52}{r['repoll_s']:>10.2f} s "
        f"{10 / r['repoll_s']:>8.1f}x under the 10 s target"
    )


if __name__ == "__main__":
    main()
