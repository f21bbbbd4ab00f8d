"""The Result cache: a process-local LRU+TTL tier, and Redis as the shared tier behind it.

- Local: ``cachetools.TTLCache`` (LRU eviction at ``cache_max_entries``, entries expire after
  ``cache_ttl_s``). Answers in microseconds; each CacheLookup replica has its own.
- Redis (``NEWSDESK_REDIS_URL``): shared by all replicas and restarts, same TTL (``SET EX``).
  A Redis hit is copied into the local tier.
- Redis down: every lookup and write is answered from the local tier alone and counted as a
  *fallback*. After a failure Redis is left alone for ``cache_redis_retry_s`` (so an outage
  costs one timeout, not one per request), then tried again; the first success counts as a
  reconnect. redis-py re-opens its connections by itself; the client's own retries are off so
  a dead server fails fast (``cache_redis_timeout_s``).

Keys: :func:`serving.model.versions.cache_key` (content hash + model/adapter/prompt version). Only
Results are cached, never errors: an error is worth retrying.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Literal

import redis.asyncio as aioredis
from cachetools import TTLCache
from pydantic import ValidationError
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from serving.model.result import Result
from serving.settings import ServingSettings
from serving.summaries import metrics

log = logging.getLogger(__name__)

RedisState = Literal["disabled", "up", "down"]


@dataclass
class CacheCounters:
    local_hits: int = 0
    redis_hits: int = 0
    misses: int = 0
    puts: int = 0
    fallbacks: int = 0  # operations answered without Redis because it was unreachable
    redis_errors: int = 0  # failed Redis calls (each one opens a retry_s window)
    reconnects: int = 0  # Redis answered again after a failure
    bad_entries: int = 0  # Redis values that no longer parse as a Result (dropped)


class SummaryCache:
    """Local LRU+TTL tier with an optional Redis tier; see the module docstring."""

    def __init__(
        self,
        *,
        max_entries: int = 10_000,
        ttl_s: float = 24 * 3600,
        redis_url: str | None = None,
        redis_timeout_s: float = 0.5,
        redis_retry_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl_s = ttl_s
        self._local: TTLCache[str, Result] = TTLCache(maxsize=max_entries, ttl=ttl_s, timer=clock)
        # TTLCache is not thread-safe; Serve may call a replica from several threads.
        self._lock = threading.Lock()
        self._clock = clock
        self._retry_s = redis_retry_s
        self._down_until = 0.0
        self._failed = False
        self.counters = CacheCounters()
        self._redis: aioredis.Redis | None = None
        self.redis_url = redis_url
        if redis_url:
            self._redis = aioredis.Redis.from_url(
                redis_url,
                socket_timeout=redis_timeout_s,
                socket_connect_timeout=redis_timeout_s,
                retry=Retry(NoBackoff(), 0),
                decode_responses=False,
            )

    @classmethod
    def from_settings(cls, settings: ServingSettings) -> SummaryCache:
        return cls(
            max_entries=settings.cache_max_entries,
            ttl_s=settings.cache_ttl_s,
            redis_url=settings.redis_url,
            redis_timeout_s=settings.cache_redis_timeout_s,
            redis_retry_s=settings.cache_redis_retry_s,
        )

    # --- lookups ----------------------------------------------------------------------------

    def get_local(self, key: str) -> Result | None:
        with self._lock:
            return self._local.get(key)

    def put_local(self, key: str, result: Result) -> None:
        with self._lock:
            self._local[key] = result

    async def get(self, key: str) -> Result | None:
        """The cached Result for ``key`` (local tier, then Redis), or None."""
        return (await self.lookup(key))[0]

    async def lookup(self, key: str) -> tuple[Result | None, Literal["local", "redis", "miss"]]:
        """The cached Result and the tier that had it. Hits and misses are counted here."""
        found = self.get_local(key)
        if found is not None:
            self._count("local_hits", "hit_local")
            return found, "local"
        raw = await self._redis_call("get", key)
        if raw is not None:
            try:
                found = Result.model_validate_json(raw)
            except ValidationError:
                # written by an older Result schema: a miss, and the entry goes
                self.counters.bad_entries += 1
                await self._redis_call("delete", key)
            else:
                self.put_local(key, found)
                self._count("redis_hits", "hit_redis")
                return found, "redis"
        self._count("misses", "miss")
        return None, "miss"

    async def put(self, key: str, result: Result) -> None:
        """Store in both tiers (the Redis write is skipped while Redis is down)."""
        self.put_local(key, result)
        self.counters.puts += 1
        await self._redis_call("set", key, result.model_dump_json().encode(), ex=int(self.ttl_s))

    # --- Redis with fallback ----------------------------------------------------------------

    @property
    def redis_state(self) -> RedisState:
        if self._redis is None:
            return "disabled"
        return "down" if self._failed else "up"

    async def _redis_call(self, op: str, *args: object, **kwargs: object) -> bytes | None:
        if self._redis is None:
            return None
        if self._failed and self._clock() < self._down_until:
            self._count("fallbacks", "fallback")
            return None
        try:
            value = await getattr(self._redis, op)(*args, **kwargs)
        except (RedisError, OSError) as exc:
            if not self._failed:
                log.warning("Redis unreachable (%s); answering from the local cache", exc)
            self._failed = True
            self._down_until = self._clock() + self._retry_s
            self.counters.redis_errors += 1
            self._count("fallbacks", "fallback")
            return None
        if self._failed:
            log.warning("Redis reachable again; shared cache tier back")
            self._failed = False
            self.counters.reconnects += 1
        return value if op == "get" else None

    async def ping(self) -> bool:
        """Whether Redis answers now (False when disabled); resets the retry window on success."""
        if self._redis is None:
            return False
        try:
            await self._redis.ping()
        except (RedisError, OSError):
            return False
        if self._failed:
            self._failed = False
            self.counters.reconnects += 1
        return True

    def _count(self, counter: str, event: str) -> None:
        setattr(self.counters, counter, getattr(self.counters, counter) + 1)
        metrics.cache_events().inc(1, tags={"event": event})

    # --- reporting --------------------------------------------------------------------------

    def stats(self) -> dict[str, object]:
        c = self.counters
        lookups = c.local_hits + c.redis_hits + c.misses
        with self._lock:
            size = len(self._local)
        return {
            **asdict(c),
            "lookups": lookups,
            "hit_rate": (c.local_hits + c.redis_hits) / lookups if lookups else None,
            "local_entries": size,
            "local_max_entries": self._local.maxsize,
            "ttl_s": self.ttl_s,
            "redis": self.redis_state,
        }

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
