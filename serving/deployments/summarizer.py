"""The Summarizer: one model replica; ``@serve.batch`` gathers single articles into batches.

Callers send one article per call (``summarize``); ``@serve.batch`` collects up to
``max_batch_size`` of them, waiting at most ``batch_wait_timeout_s`` for a batch to fill, and
hands the list to the engine's batched ``summarize`` on the engine's own thread (the replica's
event loop stays free for health checks, ``reconfigure`` and the next batch's arrivals; one
thread for the load and every call, see ``__init__``).

With continuous batching (``NEWSDESK_CONTINUOUS_BATCHING``, CPU profiles) ``@serve.batch`` is
the intake only: the batch it gathers is handed to the engine's persistent decode loop
(:class:`~serving.engine.continuous.ContinuousBatcher`, on the engine thread), which admits
each article into a free slot between decode steps; the batch method returns one future per
article at once and each caller awaits its own, so an article is answered the moment its
summary ends and never waits for the rest of a batch. ``max_batch_size`` is then the number of
slots.

``user_config`` (:class:`SummarizerConfig`) is applied by ``reconfigure`` without a restart:
the batch size and wait through ``set_max_batch_size`` / ``set_batch_wait_timeout_s``, and the
LoRA adapter through ``engine.set_adapter`` (the engine waits for the running batch first).

**Which adapter.** Decided each time ``reconfigure`` runs (when a replica starts, and when a
deploy changes the ``user_config``), first match wins:

1. ``adapter`` given in ``user_config`` (a folder, or ``null`` for the bare base model): a pin,
   e.g. a live push (``train.registry.push_to_serve``, which promotion itself uses);
2. else the profile's latest promotion in the registry (``serving.summaries.promotions``; a
   promotion of "no run" means the bare base), read from the database at that moment;
3. else the profile's own ``adapter`` (none for most profiles).

So a redeploy of a config file that leaves ``adapter`` out, or a replica restarted on another
node, serves the promoted adapter; a pin wins until a deploy without it (or the next
promotion's push, which replaces it). If the registry cannot be read, the replica keeps what
it serves and says why in ``info()``.
Batches never exceed the deployment's ``max_ongoing_requests``:
:func:`serving.deployments.builder.build_app` keeps it at twice the batch size so the next batch
fills while one runs.

The class is plain Python: tests drive ``summarize`` concurrently as async code with a real
engine, without Ray.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field
from ray import serve

from core.article import Article
from serving.engine import SummarizeEngine
from serving.engine.continuous import ContinuousBatcher
from serving.model.profiles import ModelProfile
from serving.model.result import ArticleError, Outcome, Result
from serving.model.versions import Versions
from serving.settings import ServingSettings
from serving.summaries import metrics
from serving.summaries.promotions import read_promotion

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_MAX_BATCH_SIZE = 8
DEFAULT_BATCH_WAIT_S = 0.05
PROMOTION_READ_TIMEOUT_S = 5.0


class SummarizerConfig(BaseModel):
    """The Summarizer's ``user_config``: changed live by ``serve deploy``."""

    model_config = ConfigDict(extra="forbid")

    max_batch_size: int = Field(default=DEFAULT_MAX_BATCH_SIZE, ge=1, le=256)
    batch_wait_timeout_s: float = Field(default=DEFAULT_BATCH_WAIT_S, ge=0, le=60)
    adapter: str | None = Field(
        default=None,
        description="PEFT LoRA adapter folder; null = the bare base model. Left out: the "
        "profile's promoted adapter (registry), else the profile's own.",
    )


class Summarizer:
    """A model replica. ``engine`` may be given (tests share one); otherwise it is loaded from
    ``profile`` (the app builder passes the ModelProfile it parsed; a name or path works too).

    Its versions (model, adapter, prompt) are the engine's, read once at load and again when
    ``reconfigure`` swaps the adapter; every outcome it returns carries them, which is how the
    callers' :class:`~serving.summaries.lookup.VersionTracker` learns of a change first."""

    def __init__(
        self,
        profile: ModelProfile | str,
        settings: ServingSettings,
        engine: SummarizeEngine | None = None,
    ) -> None:
        started = time.perf_counter()
        # All of the engine's work, its load included, on one thread of its own. Measured:
        # once one thread has run torch's OpenMP regions (the load computes the prefix
        # cache), decoding from another thread is ~1.5x slower (small ops wait on OpenMP
        # wake-ups), and asyncio.to_thread hands each call to whichever pool thread is free.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine")
        self._engine = (
            engine or self._executor.submit(SummarizeEngine.load, profile, settings).result()
        )
        self.load_s = time.perf_counter() - started
        self._versions: Versions = self._engine.versions
        self._config = SummarizerConfig()
        self._settings = settings
        profile_adapter = self._engine.profile.adapter_path
        self._profile_adapter = str(profile_adapter) if profile_adapter else None
        self._adapter = self._profile_adapter  # the folder applied now (None: bare base)
        self._adapter_source = "profile"
        self._adapter_error: str | None = None
        self._inflight = 0  # summarize() calls not yet answered
        self._running = 0  # articles in the batch the engine is working on
        self._batch_sizes: Counter[int] = Counter()
        self._articles = 0
        self._batch_ms_total = 0.0
        self._model_failures: Counter[str] = Counter()  # why the verifier failed the model
        self._batcher: ContinuousBatcher | None = None
        if settings.continuous_batching:
            try:
                self._batcher = ContinuousBatcher(self._engine, slots=self._config.max_batch_size)
            except ValueError as exc:  # a profile that decodes whole batches (GPU generate)
                log.info("continuous batching off: %s", exc)
            else:
                self._executor.submit(self._batcher.run)
        log.info("Summarizer ready: %s in %.1f s", self._engine.model_id, self.load_s)

    def close(self) -> None:
        """Stop the continuous loop (what is still in it is answered with an error) and let
        the engine thread end."""
        if self._batcher is not None:
            self._batcher.stop()
        self._executor.shutdown(wait=False)

    # --- configuration ----------------------------------------------------------------------

    async def reconfigure(self, user_config: dict[str, Any] | None) -> None:
        """Apply ``user_config``. A bad config raises (Serve reports the failed update); an
        adapter that fails to load leaves the previous one serving and is reported by
        ``info()`` (and ``/readyz``), so a typo in a path does not take the service down."""
        config = SummarizerConfig.model_validate(user_config or {})
        self.summarize_batch.set_max_batch_size(config.max_batch_size)
        self.summarize_batch.set_batch_wait_timeout_s(config.batch_wait_timeout_s)
        if self._batcher is not None and config.max_batch_size != self._batcher.slots:
            await asyncio.wrap_future(self._batcher.resize(config.max_batch_size))
        self._config = config
        wanted, source = await self._wanted_adapter(config)
        if wanted == self._adapter:
            self._adapter_source = source
            return
        try:
            await self._on_engine_thread(self._engine.set_adapter, wanted)
        except Exception as exc:
            self._adapter_error = f"adapter {wanted!r} ({source}) not applied: {exc}"
            log.error("%s; still serving adapter %s", self._adapter_error, self._engine.adapter_id)
        else:
            self._adapter, self._adapter_source = wanted, source
            self._adapter_error = None
            log.info("adapter now %s (%s)", self._engine.adapter_id, source)
        self._versions = self._engine.versions

    async def _wanted_adapter(self, config: SummarizerConfig) -> tuple[str | None, str]:
        """(adapter folder or None, where that choice came from): see the module docstring."""
        if "adapter" in config.model_fields_set:
            return config.adapter, "user_config"
        if not self._settings.database_url:
            return self._profile_adapter, "profile"
        try:
            promotion = await read_promotion(
                self._settings.database_url, self._engine.profile.name, PROMOTION_READ_TIMEOUT_S
            )
        except Exception as exc:  # the database is down: keep serving what we serve
            self._adapter_error = f"registry not read: {type(exc).__name__}: {exc}"
            log.warning("%s; keeping adapter %s", self._adapter_error, self._engine.adapter_id)
            return self._adapter, self._adapter_source
        if promotion is None:
            return self._profile_adapter, "profile"
        return promotion.adapter_path, f"promoted:{promotion.adapter_id or 'base'}"

    async def _on_engine_thread(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn`` on the engine's thread: through the continuous loop when it runs there (it
        lets the active rows finish first), else as the thread's next task."""
        if self._batcher is not None:
            return await asyncio.wrap_future(self._batcher.call(lambda: fn(*args)))
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # --- serving ----------------------------------------------------------------------------

    async def summarize(self, article: Article) -> Outcome:
        """One article's outcome; batched with concurrent calls by ``summarize_batch``."""
        self._inflight += 1
        try:
            enqueued = time.perf_counter()
            outcome = await self.summarize_batch((article, enqueued))
            if isinstance(outcome, asyncio.Future):  # continuous: admitted, now its own wait
                outcome = await outcome
            return outcome
        finally:
            self._inflight -= 1

    @serve.batch(max_batch_size=DEFAULT_MAX_BATCH_SIZE, batch_wait_timeout_s=DEFAULT_BATCH_WAIT_S)
    async def summarize_batch(
        self, items: list[tuple[Article, float]]
    ) -> list[Outcome] | list[asyncio.Future[Outcome]]:
        if self._batcher is not None:
            self._batch_sizes[len(items)] += 1  # intake sizes; the slots' fill is in info()
            metrics.batch_sizes().observe(len(items))
            return [self._continuous(article, enqueued) for article, enqueued in items]
        articles = [article for article, _ in items]
        started = time.perf_counter()
        self._running = len(articles)
        self._batch_sizes[len(articles)] += 1
        self._articles += len(articles)
        metrics.batch_sizes().observe(len(articles))
        metrics.queue_depth().set(self.queue_depth)
        try:
            outcomes = await self._on_engine_thread(self._engine.summarize, articles)
        except Exception as exc:  # the engine contains per-article failures; this is a bug
            log.exception("engine failed on a batch of %d", len(articles))
            outcomes = [self._error(a, f"{type(exc).__name__}: {exc}") for a in articles]
        finally:
            self._running = 0
        elapsed_ms = (time.perf_counter() - started) * 1000
        self._batch_ms_total += elapsed_ms
        metrics.batch_latency().observe(elapsed_ms)
        self._model_failures.update(
            metrics.count_results([o for o in outcomes if isinstance(o, Result)])
        )
        return [
            _with_queue_time(outcome, (started - enqueued) * 1000)
            for outcome, (_, enqueued) in zip(outcomes, items, strict=True)
        ]

    def _continuous(self, article: Article, enqueued: float) -> asyncio.Future[Outcome]:
        """The article into the continuous loop; its outcome, when it ends, as a future."""
        assert self._batcher is not None
        self._articles += 1
        metrics.queue_depth().set(self.queue_depth)
        loop = asyncio.get_running_loop()
        result: asyncio.Future[Outcome] = loop.create_future()
        waited_ms = (time.perf_counter() - enqueued) * 1000  # @serve.batch's gathering

        def settle(done: Any) -> None:
            outcome = _with_queue_time(done.result(), waited_ms)
            self._model_failures.update(
                metrics.count_results([outcome] if isinstance(outcome, Result) else [])
            )
            if not result.done():
                result.set_result(outcome)

        self._batcher.submit(article).add_done_callback(
            lambda done: loop.call_soon_threadsafe(settle, done)
        )
        return result

    def _error(self, article: Article, message: str) -> ArticleError:
        return ArticleError(
            article_id=article.id,
            content_hash=article.content_hash,
            code="internal_error",
            message=message,
            **self._versions.as_dict(),  # type: ignore[arg-type]
        )

    # --- introspection ----------------------------------------------------------------------

    @property
    def queue_depth(self) -> int:
        """Articles in this replica waiting for a batch slot."""
        if self._batcher is not None:
            return self._batcher.waiting
        return max(0, self._inflight - self._running)

    def versions(self) -> Versions:
        return self._versions

    def info(self) -> dict[str, Any]:
        batches = sum(self._batch_sizes.values())
        return {
            **self.versions().as_dict(),
            "replica": _replica_id(),
            "pid": os.getpid(),
            "load_s": round(self.load_s, 2),
            "max_batch_size": self._config.max_batch_size,
            "batch_wait_timeout_s": self._config.batch_wait_timeout_s,
            "engine_max_batch_size": self._engine.max_batch_size,
            "adapter": self._adapter,
            "adapter_source": self._adapter_source,
            "adapter_error": self._adapter_error,
            "queue_depth": self.queue_depth,
            "running": self._batcher.active if self._batcher is not None else self._running,
            "continuous": self._batcher.info() if self._batcher is not None else None,
            "batches": batches,
            "articles": self._articles,
            "batch_size_histogram": {str(k): v for k, v in sorted(self._batch_sizes.items())},
            "mean_batch_ms": round(self._batch_ms_total / batches, 1) if batches else None,
            # Results served by the engine, by method/verdict ("none": guard off), and the
            # failure codes of the model's summaries the verifier failed (per Result)
            "summaries": {
                f"{method}/{verdict}": n
                for (method, verdict), n in sorted(self._engine.outcomes.items())
            },
            "verifier_failures": dict(sorted(self._model_failures.items())),
        }


def _with_queue_time(outcome: Outcome, queue_ms: float) -> Outcome:
    """Add the wait in the replica before the batch started (the engine only sees its own)."""
    if not isinstance(outcome, Result):
        return outcome
    timings = outcome.timings.model_copy(
        update={
            "queue_ms": outcome.timings.queue_ms + queue_ms,
            "total_ms": outcome.timings.total_ms + queue_ms,
        }
    )
    return outcome.model_copy(update={"timings": timings})


def _replica_id() -> str | None:
    try:
        return serve.get_replica_context().replica_id.unique_id
    except Exception:  # not inside a Serve replica (tests)
        return None


SummarizerDeployment = serve.deployment(name="Summarizer")(Summarizer)
