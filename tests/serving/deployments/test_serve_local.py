"""The application on a local Ray (``serve.run`` on the session's ``ray.init``, started by the
``newsdesk up`` stack component): the real deployments and handles, HTTP through Serve's
proxy, the summarization loop, streaming."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from ray.serve.exceptions import RayServeException

from cluster.components import StackContext
from cluster.local_cluster import free_port
from cluster.serve_app import APP_NAME, ServeAppComponent
from cluster.settings import Settings
from serving.summaries.result_store import ResultStore
from tests.support.serve import sample_article, store_articles, write_test_profile


@pytest.fixture
def serve_url(
    ray_session: None,
    settings: Settings,
    engine_settings: Settings,
    prepared_model_dir: Path,
    tmp_path: Path,
) -> Iterator[str]:
    """The app started the way `newsdesk up` starts it: the stack's Serve component."""
    from ray import serve

    app_settings = Settings(
        **{
            **settings.model_dump(),
            "state_dir": engine_settings.state_dir,  # the converted model is there
            "model_profile": str(write_test_profile(tmp_path)),
            "serve_port": free_port(),
            "engine_threads": 2,
            "summarize_loop_interval_s": 1.0,
        }
    )
    ctx = StackContext(app_settings)
    component = ServeAppComponent()
    component.start(ctx)
    try:
        assert ctx.values["serve_url"] in component.describe(ctx)
        yield ctx.values["serve_url"]
    finally:
        component.stop(ctx)
    try:
        running = serve.status().applications
    except RayServeException:  # no Serve instance left: stopped cleanly
        running = {}
    assert APP_NAME not in running


async def test_app_serves_streams_and_summarizes_stored_articles(
    serve_url: str, settings: Settings
) -> None:
    store = await ResultStore.open(settings)
    try:
        stored = await store_articles(store.pool, [sample_article(0), sample_article(3)])
    finally:
        await store.close()

    async with httpx.AsyncClient(base_url=serve_url, timeout=300) as client:
        ready = await client.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["checks"]["model"]["detail"].startswith("serve-test/")

        # the loop summarizes the stored articles without any API call for them
        deadline = time.monotonic() + 240
        listed: list[int] = []
        while time.monotonic() < deadline:
            listed = [a["id"] for a in (await client.get("/v1/articles")).json()["articles"]]
            if len(listed) == 2:
                break
            await _sleep(1)
        assert sorted(listed) == sorted(a.id for a in stored)  # type: ignore[type-var]
        detail = (await client.get(f"/v1/articles/{stored[0].id}")).json()
        assert detail["status"] == "summarized" and detail["result"]["summary"]

        # the same text posted to the API is a cache hit (CacheLookup saw the loop's Result)
        posted = sample_article(0).model_dump(exclude={"content_hash"}, mode="json")
        hit = await client.post("/v1/summarize", json=posted)
        assert hit.status_code == 200 and hit.headers["x-cache"] == "local"
        assert hit.json()["summary"] == detail["result"]["summary"]

        # streaming: the cached article's line comes first, the model's later
        fresh = sample_article(1).model_dump(exclude={"content_hash"}, mode="json")
        arrivals: list[tuple[float, dict]] = []
        started = time.monotonic()
        async with client.stream(
            "POST", "/v1/summarize/stream", json={"articles": [fresh, posted]}
        ) as response:
            assert response.status_code == 200
            async for line in response.aiter_lines():
                if line:
                    arrivals.append((time.monotonic() - started, json.loads(line)))
        assert [a[1]["index"] for a in arrivals] == [1, 0]
        # sent as soon as it is known, not held back until the model's line (which took
        # 0.38 s on the Zen 5 of 2026-12-01: a fixed 0.5 s gap assumed a slower engine)
        assert arrivals[0][0] < 0.5 * arrivals[1][0]
        assert all(a[1]["outcome"]["kind"] == "result" for a in arrivals)

        # bad input through Serve's proxy: a 4xx JSON body with the request id
        bad = await client.post("/v1/summarize", content=b"{oops")
        assert bad.status_code == 400
        assert bad.json()["error"]["request_id"] == bad.headers["x-request-id"]
        mine = await client.post(
            "/v1/summarize", content=b"[]", headers={"X-Request-ID": "client-42"}
        )
        assert mine.status_code == 422
        assert mine.headers.get_list("x-request-id") == ["client-42"]
        assert mine.json()["error"]["request_id"] == "client-42"

        stats = (await client.get("/v1/stats")).json()
        assert stats["summarizer"]["articles"] >= 3
        assert stats["summarization_loop"]["outcomes"]["summarized"] == 2
        assert stats["throughput"]["summarized_24h"] >= 3


async def _sleep(seconds: float) -> None:
    import asyncio

    await asyncio.sleep(seconds)
