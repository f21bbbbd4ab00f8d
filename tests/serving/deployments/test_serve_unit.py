"""Serving logic with the real engine, without Ray: the ``@serve.batch`` method as plain async
code, ``reconfigure`` (batch options, adapter swap), the lookup tiers, the API end to end
in-process, and the summarization loop over a real PostgreSQL."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from cluster.settings import Settings
from core.article import Article
from serving.deployments.summarizer import Summarizer
from serving.model.result import ArticleError, Result
from serving.model.versions import Versions
from serving.summaries.cache import SummaryCache
from serving.summaries.lookup import LookupService, VersionTracker
from serving.summaries.loop import SummarizationLoop
from serving.summaries.result_store import ResultStore
from tests.support.serve import RedisServer, sample_article, store_articles


def _tracker(summarizer: Summarizer) -> VersionTracker:
    async def fetch() -> Versions:
        return summarizer.versions()

    return VersionTracker(fetch)


def _comparable(outcome: Result | ArticleError) -> dict:
    return outcome.model_dump(exclude={"timings"})


async def test_batch_method_gathers_concurrent_calls(summarizer: Summarizer) -> None:
    articles = [sample_article(i) for i in range(3)]
    await summarizer.reconfigure({"max_batch_size": 4, "batch_wait_timeout_s": 1.0})
    together = await asyncio.gather(*(summarizer.summarize(a) for a in articles))
    assert summarizer.info()["batch_size_histogram"] == {"3": 1}
    assert [o.content_hash for o in together] == [a.content_hash for a in articles]
    assert all(isinstance(o, Result) for o in together), together
    assert all(
        o.timings.queue_ms > 0 and o.timings.total_ms >= o.timings.queue_ms for o in together
    )

    # batch size 2, live: 3 concurrent calls become batches of 2 and 1, same outcomes
    await summarizer.reconfigure({"max_batch_size": 2, "batch_wait_timeout_s": 1.0})
    split = await asyncio.gather(*(summarizer.summarize(a) for a in articles))
    info = summarizer.info()
    assert info["batch_size_histogram"] == {"1": 1, "2": 1, "3": 1}
    assert info["max_batch_size"] == 2 and info["articles"] == 6
    assert [_comparable(o) for o in split] == [_comparable(o) for o in together]
    assert info["queue_depth"] == 0 and info["running"] == 0


async def test_reconfigure_validates_and_swaps_adapters(
    summarizer: Summarizer, prepared_model_dir: Path, tmp_path: Path
) -> None:
    with pytest.raises(ValidationError):
        await summarizer.reconfigure({"max_batch_size": 0})
    with pytest.raises(ValidationError):
        await summarizer.reconfigure({"max_batch_sise": 4})

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(prepared_model_dir)
    lora = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    lora.save_pretrained(tmp_path / "lora-a")

    assert summarizer.versions().adapter_id is None
    await summarizer.reconfigure({"adapter": str(tmp_path / "lora-a")})
    adapter_id = summarizer.versions().adapter_id
    assert adapter_id is not None and adapter_id.startswith("lora-a@")
    assert summarizer.info()["adapter"] == str(tmp_path / "lora-a")

    # a folder that is no adapter: reported, and the previous adapter keeps serving
    await summarizer.reconfigure({"adapter": str(tmp_path / "missing")})
    info = summarizer.info()
    assert info["adapter_id"] == adapter_id and "missing" in info["adapter_error"]

    await summarizer.reconfigure({"adapter": None})
    assert summarizer.versions().adapter_id is None and summarizer.info()["adapter_error"] is None


async def test_lookup_tiers_call_the_model_once(summarizer: Summarizer, settings: Settings) -> None:
    redis_server = RedisServer().start()
    store = await ResultStore.open(settings)
    caches = [
        SummaryCache(redis_url=redis_server.url),
        SummaryCache(redis_url=redis_server.url),
        SummaryCache(),
    ]
    try:
        first = LookupService(
            cache=caches[0],
            summarize=summarizer.summarize,
            versions=_tracker(summarizer),
            store=store,
        )
        article = sample_article(0)
        # two identical requests at once share one model call
        (a, src_a), (b, src_b) = await asyncio.gather(
            first.summarize(article), first.summarize(article)
        )
        assert {src_a, src_b} == {"model", "coalesced"} and a == b
        assert isinstance(a, Result)
        assert (await first.summarize(article)) == (a, "local")
        # another replica: Redis; a cold replica without Redis: PostgreSQL
        second = LookupService(
            cache=caches[1],
            summarize=summarizer.summarize,
            versions=_tracker(summarizer),
            store=store,
        )
        assert (await second.summarize(article)) == (a, "redis")
        third = LookupService(
            cache=caches[2],
            summarize=summarizer.summarize,
            versions=_tracker(summarizer),
            store=store,
        )
        assert (await third.summarize(article)) == (a, "db")
        assert summarizer.info()["articles"] == 1

        # a stored article with that text: the hit is its Result, saved under its id
        stored = (await store_articles(store.pool, [article]))[0]
        result, source = await first.summarize(stored)
        assert source == "local" and result.article_id == stored.id
        row = await store.pool.fetchrow(
            "SELECT status, model_id, adapter_id, prompt_version FROM results "
            "WHERE article_id = $1",
            stored.id,
        )
        assert dict(row) == {
            "status": "ok",
            "model_id": a.model_id,
            "adapter_id": "",
            "prompt_version": a.prompt_version,
        }
        # first: two misses (the coalesced pair), then two local hits
        assert first.stats()["cache"]["hit_rate"] == pytest.approx(0.5)
    finally:
        for cache in caches:
            await cache.close()
        await store.close()
        redis_server.stop()


async def test_api_end_to_end_in_process(api: httpx.AsyncClient, summarizer: Summarizer) -> None:
    good = sample_article(1).model_dump(exclude={"content_hash"})
    empty = {"title": "Only a title", "text": "  <p> </p> "}

    first = await api.post("/v1/summarize", json=good)
    assert first.status_code == 200, first.text
    assert first.headers["x-cache"] == "model"
    result = Result.model_validate(first.json())
    again = await api.post("/v1/summarize", json=good)
    assert again.headers["x-cache"] == "local"
    assert Result.model_validate(again.json()) == result

    refused = await api.post("/v1/summarize", json=empty)
    assert refused.status_code == 422
    assert refused.json()["error"]["code"] == "empty_input"

    batch = await api.post("/v1/summarize/batch", json={"articles": [empty, good, empty]})
    assert batch.status_code == 200
    kinds = [(o["kind"], o.get("code")) for o in batch.json()["results"]]
    assert kinds == [("error", "empty_input"), ("result", None), ("error", "empty_input")]
    assert Result.model_validate(batch.json()["results"][1]) == result

    async with api.stream(
        "POST", "/v1/summarize/stream", json={"articles": [good, empty]}
    ) as stream:
        assert stream.headers["content-type"].startswith("application/x-ndjson")
        lines = [line async for line in stream.aiter_lines() if line]
    by_index = {x["index"]: x["outcome"] for x in map(json.loads, lines)}
    assert sorted(by_index) == [0, 1]
    assert by_index[0]["kind"] == "result" and by_index[1]["code"] == "empty_input"

    # the good article reached the engine once; the empty ones never did
    assert summarizer.info()["articles"] == 1
    ready = await api.get("/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    stats = (await api.get("/v1/stats")).json()
    assert stats["lookup"]["hit_local"] == 3
    assert stats["summarizer"]["batch_size_histogram"] == {"1": 1}
    assert stats["api"]["latency"]["summarize"]["count"] == 3


async def test_loop_summarizes_stored_articles(summarizer: Summarizer, settings: Settings) -> None:
    store = await ResultStore.open(settings)
    try:
        originals = await store_articles(
            store.pool, [sample_article(2), Article(title="Only a title", text="", source="x")]
        )
        copy = (
            await store_articles(store.pool, [sample_article(2)], feed_url="https://other.test/rss")
        )[0]
        lookup = LookupService(
            cache=SummaryCache(),
            summarize=summarizer.summarize,
            versions=_tracker(summarizer),
            store=store,
        )

        async def versions() -> Versions:
            return summarizer.versions()

        loop = SummarizationLoop(
            store=store, summarize=lookup.summarize, versions=versions, settings=settings
        )
        assert await loop.run_once() == 3
        assert loop.outcomes == {"summarized": 1, "cached": 1, "failed": 1}
        assert summarizer.info()["articles"] == 1  # the copy shared the original's call
        assert await loop.run_once() == 0  # nothing left: the empty article's error is final

        summary = await store.get_article(originals[0].id)  # type: ignore[arg-type]
        duplicate = await store.get_article(copy.id)  # type: ignore[arg-type]
        failed = await store.get_article(originals[1].id)  # type: ignore[arg-type]
        assert summary and summary.status == "summarized"
        assert duplicate and duplicate.result and summary.result
        assert duplicate.result.summary == summary.result.summary
        assert duplicate.result.article_id == copy.id
        assert failed and failed.status == "failed" and failed.error_code == "empty_input"
        assert loop.status()["holds_lock"] is True

        # a second loop on the same database waits for the first (advisory lock)
        other = SummarizationLoop(
            store=store, summarize=lookup.summarize, versions=versions, settings=settings
        )
        assert await other._hold_lock() is False
        await loop.close()
        assert await other._hold_lock() is True
        await other.close()
    finally:
        await store.close()
