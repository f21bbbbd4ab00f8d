"""Helpers of tests/cluster/test_multinode.py: a handle on the three-node cluster (its nodes and
Serve replicas through the dashboard's REST API, its database), ports from this suite's
ranges, feed items, polling with a deadline, and a reader that counts what it gets."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from cluster.local_cluster import RayHead, RayWorker
from tests.support.feedserver import FeedServer, Item, rss_document
from tests.support.serve import SAMPLE_TEXTS

KEY = "multinode-key"
AUTH = {"X-API-Key": KEY}


def port_in(low: int, high: int) -> int:
    """A free port of this suite's range (GCS 6480-6499, dashboard 8480-8489, HTTP 8490-8499,
    node agents 8500-8519)."""
    for port in range(low, high + 1):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {low}-{high}")


def feed_item(i: int, tag: str) -> Item:
    title, text = SAMPLE_TEXTS[i % len(SAMPLE_TEXTS)]
    return Item(
        title=f"{title} ({tag})",
        link=f"https://wire.example.com/{tag}",
        guid=f"https://wire.example.com/{tag}",
        description=f"<p>{text}</p>",
        pub_date=datetime.now(UTC),
    )


@dataclass
class Multinode:
    head: RayHead
    workers: dict[str, RayWorker]
    url: str
    dsn: str
    config_path: Path
    feeds: FeedServer
    served: list[Item]
    figures: dict[str, Any] = field(default_factory=dict)
    agent_ports: list[int] = field(default_factory=list)

    def get(self, path: str) -> Any:
        r = httpx.get(
            f"{self.head.dashboard_url}{path}",
            headers={"Authorization": f"Bearer {self.head.token}"},
            timeout=30,
        )
        r.raise_for_status()
        return r.json()

    def alive_node(self, resource: str) -> str | None:
        """The id of the live node that has ``resource`` (the newest one if several)."""
        data = self.get("/api/v0/nodes?limit=100&detail=true")["data"]["result"]["result"]
        found = [
            n["node_id"]
            for n in data
            if n["state"] == "ALIVE" and resource in (n.get("resources_total") or {})
        ]
        return found[-1] if found else None

    def placement(self) -> dict[str, list[str]]:
        """Node ids of every RUNNING replica, by deployment."""
        apps = self.get("/api/serve/applications/")["applications"]
        deployments = apps["newsdesk"]["deployments"]
        return {
            name: [r["node_id"] for r in d["replicas"] if r["state"] == "RUNNING"]
            for name, d in deployments.items()
        }

    def add_worker(self, name: str, resources: dict[str, float]) -> RayWorker:
        port = port_in(8500, 8519)
        while port in self.agent_ports:  # a killed node's agent may not have let go yet
            port = port_in(port + 1, 8519)
        self.agent_ports.append(port)
        before = set(self.alive_nodes())
        worker = RayWorker(self.head, resources=resources, num_cpus=1, agent_port=port).start()
        self.workers[name] = worker

        def joined() -> bool:
            if worker.proc is None or worker.proc.poll() is not None:
                raise RuntimeError(f"worker {name} exited: {worker.log_path.read_text()[-3000:]}")
            return bool(set(self.alive_nodes()) - before)

        wait_for(joined, 180, f"worker {name} joins")
        return worker

    def alive_nodes(self) -> list[str]:
        data = self.get("/api/v0/nodes?limit=100&detail=true")["data"]["result"]["result"]
        return [n["node_id"] for n in data if n["state"] == "ALIVE"]

    def serve_feed(self, new: list[Item]) -> None:
        self.served.extend(new)
        self.feeds.route("/wire.xml", body=rss_document(self.served, title="Wire"))


async def run_sql(dsn: str, query: str, *args: Any) -> Any:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval(query, *args)
    finally:
        await conn.close()


def sql(m: Multinode, query: str, *args: Any) -> Any:
    return asyncio.run(run_sql(m.dsn, query, *args))


def wait_for(check: Any, timeout_s: float, what: str, every_s: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except (httpx.HTTPError, KeyError, OSError, asyncpg.PostgresError) as exc:
            last = repr(exc)
        time.sleep(every_s)
    raise TimeoutError(f"not within {timeout_s:.0f} s: {what} (last: {last})")


def stats(m: Multinode) -> dict[str, Any]:
    r = httpx.get(f"{m.url}/v1/stats", headers=AUTH, timeout=30)
    r.raise_for_status()
    return r.json()


def ready(m: Multinode) -> bool:
    return httpx.get(f"{m.url}/readyz", timeout=10).status_code == 200


class Probe:
    """GETs ``url`` every 0.5 s in a thread; counts replies by status (-1: no reply within
    30 s, or a connection error) and the slowest one."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.codes: dict[int, int] = {}
        self.slowest_s = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Probe:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                code = httpx.get(self.url, timeout=30).status_code
            except httpx.HTTPError:
                code = -1
            self.codes[code] = self.codes.get(code, 0) + 1
            self.slowest_s = max(self.slowest_s, time.monotonic() - started)
            self._stop.wait(0.5)

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        self._thread.join(timeout=40)
        return {
            "by_status": {str(k): v for k, v in sorted(self.codes.items())},
            "slowest_s": round(self.slowest_s, 1),
        }
