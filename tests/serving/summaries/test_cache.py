"""The Result cache: local LRU+TTL, Redis as the shared tier, and Redis going away and back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
import redis

from cluster.local_cluster import free_port
from serving.model.versions import Versions, cache_key
from serving.summaries.cache import SummaryCache
from tests.support.serve import RedisServer, make_result, sample_article

V1 = Versions("test-model", None, "test-v1")


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.stop()


def _result(i: int):  # type: ignore[no-untyped-def]
    return make_result(sample_article(i), importance=10.0 * (i + 1))


def test_cache_key_changes_with_every_version() -> None:
    h = sample_article(0).content_hash
    keys = {
        cache_key(h, V1),
        cache_key(h, Versions("test-model", "lora@1234", "test-v1")),
        cache_key(h, Versions("other-model", None, "test-v1")),
        cache_key(h, Versions("test-model", None, "test-v2")),
        cache_key(sample_article(1).content_hash, V1),
    }
    assert len(keys) == 5
    # the content hash ignores whitespace and case: the same story posted twice shares a key
    a = sample_article(0)
    b = a.model_copy(update={"text": "  " + a.text.upper().replace(" ", "   ")})
    assert cache_key(a.content_hash, V1) == cache_key(b.content_hash, V1)


async def test_local_tier_is_lru_with_ttl() -> None:
    clock = Clock()
    cache = SummaryCache(max_entries=2, ttl_s=60, clock=clock)
    keys = [cache_key(sample_article(i).content_hash, V1) for i in range(3)]
    await cache.put(keys[0], _result(0))
    await cache.put(keys[1], _result(1))
    assert await cache.get(keys[0]) is not None  # 0 is now the most recently used
    await cache.put(keys[2], _result(2))  # evicts 1, the least recently used
    assert await cache.get(keys[1]) is None
    assert (await cache.get(keys[0])).importance == 10.0  # type: ignore[union-attr]
    clock.now += 61
    assert await cache.get(keys[0]) is None and await cache.get(keys[2]) is None
    stats = cache.stats()
    assert stats["local_hits"] == 2 and stats["misses"] == 3 and stats["redis"] == "disabled"
    assert stats["hit_rate"] == pytest.approx(2 / 5)


async def test_redis_is_shared_between_processes_with_the_same_ttl(
    redis_server: RedisServer,
) -> None:
    a = SummaryCache(redis_url=redis_server.url, ttl_s=3600)
    b = SummaryCache(redis_url=redis_server.url, ttl_s=3600)
    key = cache_key(sample_article(0).content_hash, V1)
    try:
        await a.put(key, _result(0))
        found, tier = await b.lookup(key)
        assert tier == "redis" and found == _result(0)
        found, tier = await b.lookup(key)  # copied into b's local tier
        assert tier == "local"
        ttl = redis.Redis(port=redis_server.port).ttl(key)
        assert 3590 <= ttl <= 3600
        assert b.stats()["redis_hits"] == 1 and b.stats()["redis"] == "up"
    finally:
        await a.close()
        await b.close()


async def test_unparsable_redis_entry_is_a_miss_and_is_dropped(redis_server: RedisServer) -> None:
    key = cache_key(sample_article(0).content_hash, V1)
    raw = redis.Redis(port=redis_server.port)
    raw.set(key, b'{"kind": "result", "summary": "no other fields"}')
    cache = SummaryCache(redis_url=redis_server.url)
    try:
        assert await cache.get(key) is None
        assert cache.counters.bad_entries == 1
        assert raw.exists(key) == 0
    finally:
        await cache.close()


async def test_redis_down_falls_back_to_local_and_reconnects() -> None:
    server = RedisServer().start()
    retry_s = 1.0
    cache = SummaryCache(redis_url=server.url, redis_timeout_s=0.3, redis_retry_s=retry_s)
    keys = [cache_key(sample_article(i).content_hash, V1) for i in range(3)]
    restarted = RedisServer(server.port)
    try:
        await cache.put(keys[0], _result(0))
        server.stop()

        # A local entry is still answered; a new entry is stored locally.
        assert await cache.get(keys[0]) == _result(0)
        started = time.perf_counter()
        assert await cache.get(keys[1]) is None  # Redis is tried once: fails, fallback
        await cache.put(keys[1], _result(1))
        for _ in range(20):  # inside the retry window: no Redis calls, no timeouts
            assert await cache.get(keys[1]) == _result(1)
            assert await cache.get(keys[2]) is None
        assert time.perf_counter() - started < 1.0
        stats = cache.stats()
        assert stats["redis"] == "down"
        assert stats["redis_errors"] == 1
        assert stats["fallbacks"] >= 21  # the failed call, the skipped write, 20 skipped reads

        # Redis comes back on the same port: after the window the shared tier is used again.
        restarted.start()
        await asyncio.sleep(retry_s + 0.1)
        await cache.put(keys[2], _result(2))
        assert cache.stats()["redis"] == "up" and cache.counters.reconnects == 1
        other = SummaryCache(redis_url=server.url)
        try:
            assert await other.get(keys[2]) == _result(2)
        finally:
            await other.close()
    finally:
        await cache.close()
        server.stop()
        restarted.stop()


async def test_unreachable_redis_from_the_start_still_answers() -> None:
    cache = SummaryCache(redis_url=f"redis://127.0.0.1:{free_port()}/0", redis_timeout_s=0.2)
    key = cache_key(sample_article(0).content_hash, V1)
    try:
        await cache.put(key, _result(0))
        assert await cache.get(key) == _result(0)
        assert cache.stats()["redis"] == "down" and cache.counters.fallbacks >= 1
    finally:
        await cache.close()


async def test_near_cache_answers_repeats_and_follows_versions() -> None:
    from serving.summaries.lookup import NearCache, VersionTracker

    current = {"v": V1}

    async def fetch() -> Versions:
        return current["v"]

    near = NearCache(VersionTracker(fetch, refresh_s=0.0), max_entries=10, ttl_s=60)
    article = sample_article(0)
    assert await near.get(article) is None
    near.put(article, _result(0).model_copy(update={"model_id": V1.model_id}))
    hit = await near.get(article)
    assert hit is not None and hit.summary == _result(0).summary
    # a stored article (with an id) always goes to CacheLookup, which attaches its Result
    assert await near.get(article.model_copy(update={"id": 7})) is None
    # a new adapter: old entries no longer match once the tracker has refreshed
    current["v"] = Versions("test-model", "lora@1", "test-v1")
    assert await near.get(article) is not None  # still the old versions: starts a refresh
    await asyncio.sleep(0.01)
    assert await near.get(article) is None
    assert near.stats()["hits"] == 2 and near.stats()["entries"] == 1
