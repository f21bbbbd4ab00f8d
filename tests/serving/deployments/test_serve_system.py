"""The real thing: `ray start --head` in a subprocess, `serve deploy serve_config.yaml`, HTTP
with httpx, the real PostgreSQL and a private Redis that goes away mid-test, live
reconfiguration, and a Summarizer replica killed under load.

The deployed config is serve_config.yaml itself with this test's ports, database, Redis, state
dir and a short-output profile filled in (the file's structure and deployment overrides are
what gets deployed)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import yaml

from cluster.local_cluster import RayHead, free_port
from core import db
from core.article import Article
from serving.deployments.builder import fast_path_env
from serving.model.result import Result
from serving.summaries.result_store import ResultStore
from tests.support.serve import RedisServer, sample_article, store_articles, write_test_profile

pytestmark = pytest.mark.system

ROOT = Path(__file__).resolve().parents[3]
KEY = "system-test-key"
AUTH = {"X-API-Key": KEY}


@dataclass
class Deployed:
    head: RayHead
    redis: RedisServer
    url: str
    database_url: str
    config: dict[str, Any]
    config_path: Path

    def redeploy(self, summarizer_user_config: dict[str, Any]) -> None:
        (app,) = self.config["applications"]
        (summarizer,) = [d for d in app["deployments"] if d["name"] == "Summarizer"]
        summarizer["user_config"] = {**summarizer["user_config"], **summarizer_user_config}
        self.config_path.write_text(yaml.safe_dump(self.config))
        self.head.serve("deploy", str(self.config_path))


@pytest.fixture(scope="module")
async def system_db(pg_server_dsn: str) -> AsyncIterator[str]:
    name = f"nd_sys_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(pg_server_dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    yield db.with_database(pg_server_dsn, name)
    admin = await asyncpg.connect(pg_server_dsn)
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await admin.close()


@pytest.fixture(scope="module")
def deployed(
    system_db: str,
    engine_settings: Any,
    prepared_model_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Deployed]:
    work = tmp_path_factory.mktemp("serve-system")
    redis = RedisServer().start()
    # the documented deployment mode, with HAProxy files and ports of its own
    head = RayHead(num_cpus=2, env=fast_path_env())
    try:
        head.start()
        config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
        port = free_port()
        config["http_options"]["port"] = port
        (app,) = config["applications"]
        app["args"].update(
            profile=str(write_test_profile(work)),
            state_dir=str(engine_settings.state_dir),
            database_url=system_db,
            redis_url=redis.url,
            api_key=KEY,
            settings={
                "summarize_loop_interval_s": 1.0,
                "cache_redis_timeout_s": 0.3,
                "cache_redis_retry_s": 1.0,
            },
        )
        (summarizer,) = [d for d in app["deployments"] if d["name"] == "Summarizer"]
        summarizer["user_config"]["max_batch_size"] = 4
        summarizer["user_config"]["batch_wait_timeout_s"] = 0.2
        config_path = work / "serve_config.yaml"
        config_path.write_text(yaml.safe_dump(config))
        head.serve("deploy", str(config_path))
        url = f"http://127.0.0.1:{port}"
        _wait_ready(url, timeout_s=420)
        yield Deployed(head, redis, url, system_db, config, config_path)
    finally:
        head.stop()
        redis.stop()


def _wait_ready(url: str, timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            r = httpx.get(f"{url}/readyz", timeout=10)
            last = r.text
            if r.status_code == 200:
                return r.json()
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(2)
    raise TimeoutError(f"/readyz not ready after {timeout_s} s: {last}")


def _article(i: int, tag: str) -> dict[str, Any]:
    """A sample article made unique by ``tag`` (a cache miss), as posted JSON."""
    a = sample_article(i)
    a = a.model_copy(update={"text": f"{a.text} ({tag})"})
    return a.model_dump(mode="json", exclude={"content_hash"})


async def _stats(client: httpx.AsyncClient) -> dict[str, Any]:
    r = await client.get("/v1/stats", headers=AUTH)
    assert r.status_code == 200, r.text
    return r.json()


async def test_cache_survives_redis_going_away(deployed: Deployed) -> None:
    async with httpx.AsyncClient(base_url=deployed.url, timeout=300) as client:
        refused = await client.post("/v1/summarize", json=_article(0, "r0"))
        assert refused.status_code == 401
        assert refused.json()["error"]["request_id"] == refused.headers["x-request-id"]
        mine = await client.post(
            "/v1/summarize", content=b"[]", headers={**AUTH, "X-Request-ID": "client-7"}
        )
        assert mine.status_code == 422 and mine.headers.get_list("x-request-id") == ["client-7"]
        assert mine.json()["error"]["request_id"] == "client-7"
        first = await client.post("/v1/summarize", json=_article(0, "r0"), headers=AUTH)
        assert first.status_code == 200, first.text
        assert first.headers["x-cache"] == "model"
        Result.model_validate(first.json())
        again = await client.post("/v1/summarize", json=_article(0, "r0"), headers=AUTH)
        assert again.headers["x-cache"] == "local" and again.json() == first.json()

        deployed.redis.stop()  # Redis unreachable mid-test
        hit = await client.post("/v1/summarize", json=_article(0, "r0"), headers=AUTH)
        assert hit.status_code == 200 and hit.headers["x-cache"] == "local"
        fresh = await client.post("/v1/summarize", json=_article(1, "r1"), headers=AUTH)
        assert fresh.status_code == 200 and fresh.headers["x-cache"] == "model"
        cache = (await _stats(client))["lookup"]["cache"]
        assert cache["redis"] == "down" and cache["fallbacks"] >= 1
        ready = (await client.get("/readyz")).json()
        assert ready["ready"] is True and ready["info"]["redis"] == "down"

        deployed.redis.start()  # back on the same port, empty
        await asyncio.sleep(1.5)  # past cache_redis_retry_s
        third = await client.post("/v1/summarize", json=_article(2, "r2"), headers=AUTH)
        assert third.status_code == 200
        cache = (await _stats(client))["lookup"]["cache"]
        assert cache["redis"] == "up" and cache["reconnects"] >= 1
        import redis as redis_client

        assert redis_client.Redis(port=deployed.redis.port).dbsize() >= 1


async def test_loop_summarizes_ingested_articles(deployed: Deployed) -> None:
    store = await ResultStore.open(_settings(deployed))
    try:
        stored = await store_articles(
            store.pool,
            [Article(**_article(3, "loop-a")), Article(**_article(1, "loop-b"))],
            feed_url="https://loop.test/rss",
        )
    finally:
        await store.close()
    async with httpx.AsyncClient(base_url=deployed.url, timeout=60) as client:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            details = [(await client.get(f"/v1/articles/{a.id}")).json() for a in stored]
            if all(d["status"] == "summarized" for d in details):
                break
            await asyncio.sleep(2)
        assert [d["status"] for d in details] == ["summarized", "summarized"]
        listed = {a["id"] for a in (await client.get("/v1/articles")).json()["articles"]}
        assert {a.id for a in stored} <= listed


async def test_user_config_swaps_adapter_without_restart(
    deployed: Deployed, prepared_model_dir: Path, tmp_path: Path
) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    lora = get_peft_model(
        AutoModelForCausalLM.from_pretrained(prepared_model_dir),
        LoraConfig(r=4, target_modules=["q_proj", "v_proj"]),
    )
    lora.save_pretrained(tmp_path / "lora-sys")
    async with httpx.AsyncClient(base_url=deployed.url, timeout=300) as client:
        before = (await _stats(client))["summarizer"]
        deployed.redeploy({"adapter": str(tmp_path / "lora-sys"), "max_batch_size": 2})
        deadline = time.monotonic() + 180
        after = before
        while time.monotonic() < deadline:
            after = (await _stats(client))["summarizer"]
            if (after.get("adapter_id") or "").startswith("lora-sys@"):
                break
            await asyncio.sleep(1)
        assert after["adapter_id"].startswith("lora-sys@"), after
        assert after["pid"] == before["pid"]  # reconfigured live, no new replica
        assert after["max_batch_size"] == 2
        # the caches learn new versions from the next Result (or within 2 s): a new text
        probe = await client.post("/v1/summarize", json=_article(1, "probe"), headers=AUTH)
        assert probe.json()["adapter_id"] == after["adapter_id"]
        # the new adapter is a new version: the earlier Result is not reused for it
        posted = await client.post("/v1/summarize", json=_article(0, "r0"), headers=AUTH)
        assert posted.status_code == 200
        assert posted.headers["x-cache"] == "model"
        assert posted.json()["adapter_id"] == after["adapter_id"]
        deployed.redeploy({"adapter": None, "max_batch_size": 4})


async def test_replica_killed_mid_load_loses_no_request(deployed: Deployed) -> None:
    async with httpx.AsyncClient(base_url=deployed.url, timeout=600) as client:
        before = (await _stats(client))["summarizer"]

        async def post(i: int) -> httpx.Response:
            return await client.post("/v1/summarize", json=_article(i, f"kill-{i}"), headers=AUTH)

        requests = [asyncio.ensure_future(post(i)) for i in range(6)]
        await _until_busy(client)
        os.kill(before["pid"], signal.SIGKILL)  # the Summarizer replica, mid-batch
        responses = await asyncio.gather(*requests)

        for r in responses:
            assert r.headers["content-type"].startswith("application/json"), r.text
            if r.status_code == 200:
                Result.model_validate(r.json())
            else:
                assert r.status_code in (503, 504), r.text
                assert r.json()["error"]["request_id"]
        assert sum(r.status_code == 200 for r in responses) >= 1
        _wait_ready(deployed.url, timeout_s=300)
        after = (await _stats(client))["summarizer"]
        assert after["pid"] != before["pid"]  # Serve started a new replica
        again = await client.post("/v1/summarize", json=_article(2, "after-kill"), headers=AUTH)
        assert again.status_code == 200


async def _until_busy(client: httpx.AsyncClient, timeout_s: float = 120) -> None:
    """Until the Summarizer is inside a batch (its engine is running)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if (await _stats(client))["summarizer"].get("running", 0) > 0:
            await asyncio.sleep(0.5)
            return
        await asyncio.sleep(0.2)
    raise TimeoutError("the Summarizer never started a batch")


def _settings(deployed: Deployed):  # type: ignore[no-untyped-def]
    from cluster.settings import Settings

    return Settings(database_url=deployed.database_url, redis_url=None)
