"""Continuous batching: articles join the engine's decode loop between decode steps and leave
it the moment their summary ends.

:meth:`SummarizeEngine.summarize` decodes a micro-batch from its first token to its last: a
summary that ends early holds its row until the longest one ends, and an article that arrives
meanwhile waits for the whole batch. :class:`ContinuousBatcher` runs one persistent loop on the
engine's thread over a :class:`~serving.engine.cpu.slot_decoding.SlotBatch` of ``max_batch_size``
slots: each turn it admits waiting articles into free slots (each prefilled on its own), runs one
decode step for every active row, and finishes each row that ended: the guard judges it (a
retry re-enters the loop as a new row, ahead of new arrivals), the extractive fallback when the
model's text fails, the importance signals, the Result, and the caller's future is resolved.

The same parts as the batch path, in the same order, on the same numbers: the slot decoder
gives an article the same tokens and rating alone, in a batch, or joining mid-way (batch
invariance by construction, :mod:`serving.engine.cpu.slot_decoding`), so an article's Result does
not depend on what joins or leaves around it, nor on which path served it.

Anything else that needs the engine (an adapter swap) goes through :meth:`call`: the loop stops
admitting, lets the active rows finish, runs it, and starts again on the new weights.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import torch

from core.article import Article
from serving.engine import result_assembly
from serving.engine.batching import Pending
from serving.engine.cpu.slot_decoding import RowOutput, RowRequest, SlotBatch
from serving.engine.generate import RETRY_REPETITION_PENALTY
from serving.engine.guard import Guard, Judged
from serving.model import prompt
from serving.model.result import ArticleError, Result

if TYPE_CHECKING:
    from serving.engine.engine import SummarizeEngine

log = logging.getLogger(__name__)
T = TypeVar("T")
Outcome = Result | ArticleError


@dataclass
class _Article:
    """One article on its way through the loop."""

    pending: Pending
    future: Future[Outcome]
    submitted: float
    admitted: float = 0.0
    attempts: list[Judged] = field(default_factory=list)
    probs: list[torch.Tensor | None] = field(default_factory=list)
    prefill_s: float = 0.0
    decode_s: float = 0.0
    rating_s: float = 0.0
    guard_s: float = 0.0


class ContinuousBatcher:
    """See the module docstring. ``submit`` from any thread; the loop runs on the thread that
    calls :meth:`run` (the Summarizer's engine thread) until :meth:`stop`."""

    def __init__(self, engine: SummarizeEngine, *, slots: int | None = None) -> None:
        if engine.decoder.uses_generate or engine.decoder.slots is None:
            raise ValueError(
                "continuous batching needs the engine's own CPU decode loop (slots); this "
                "profile decodes with model.generate or prefills batches together (GPU)"
            )
        self.engine = engine
        self.slots = slots or engine.max_batch_size
        self._intake: collections.deque[tuple[_Article, bool]] = collections.deque()
        self._calls: collections.deque[tuple[Callable[[], Any], Future[Any]]] = collections.deque()
        self._wake = threading.Condition()
        self._stopped = False
        self._batch: SlotBatch | None = None
        self.steps = 0
        self.admitted = 0
        self.finished = 0
        self.active_histogram: collections.Counter[int] = collections.Counter()
        _stop_at_exit(self)

    # --- from any thread --------------------------------------------------------------------

    def submit(self, article: Article) -> Future[Outcome]:
        future: Future[Outcome] = Future()
        versions = self.engine.versions
        try:
            built = prompt.build_prompt(
                self.engine.tokenizer, article, self.engine.profile.max_prompt_tokens
            )
        except prompt.InputError as exc:
            future.set_result(result_assembly.error(article, exc.code, str(exc), versions))
            return future
        except Exception as exc:  # a tokenizer failure on odd input: that article only
            log.exception("prompt building failed")
            future.set_result(
                result_assembly.error(article, "invalid_input", f"cannot read: {exc}", versions)
            )
            return future
        item = _Article(Pending.of(0, article, built), future, time.perf_counter())
        with self._wake:
            self._intake.append((item, False))
            self._wake.notify()
        return future

    def call(self, fn: Callable[[], T]) -> Future[T]:
        """Run ``fn`` on the loop's thread once the active rows have finished (new arrivals
        wait until it returns); e.g. an adapter swap."""
        future: Future[T] = Future()
        with self._wake:
            self._calls.append((fn, future))
            self._wake.notify()
        return future

    def resize(self, slots: int) -> Future[None]:
        """Decode in ``slots`` slots from the next turn with no active row on."""

        def apply() -> None:
            self.slots = slots

        return self.call(apply)

    def stop(self) -> None:
        with self._wake:
            self._stopped = True
            self._wake.notify()

    @property
    def waiting(self) -> int:
        return len(self._intake)

    @property
    def active(self) -> int:
        return self._batch.active if self._batch is not None else 0

    def info(self) -> dict[str, Any]:
        return {
            "slots": self.slots,
            "active": self.active,
            "waiting": self.waiting,
            "steps": self.steps,
            "admitted": self.admitted,
            "finished": self.finished,
            "active_rows_per_step": {str(k): v for k, v in sorted(self.active_histogram.items())},
        }

    # --- the loop (one thread) --------------------------------------------------------------

    def run(self) -> None:
        torch.set_num_threads(self.engine._threads)  # per thread (see SummarizeEngine.summarize)
        while True:
            with self._wake:
                while (
                    not self._stopped and not self._intake and not self._calls and not self.active
                ):
                    self._wake.wait()
                if self._stopped:
                    break
            try:
                self._turn()
            except Exception as exc:  # a bug: fail what is in flight, keep the loop alive
                log.exception("continuous batching turn failed")
                self._fail_all(f"{type(exc).__name__}: {exc}")
        self._fail_all("the Summarizer is shutting down")

    def _turn(self) -> None:
        if self._calls and not self.active:
            fn, future = self._calls.popleft()
            try:
                future.set_result(fn())
            except Exception as exc:
                future.set_exception(exc)
            self._batch = None  # weights or prefix may have changed: a new cache
            return
        with self.engine._lock:
            batch = self._batch_for_now()
            outputs: list[RowOutput] = []
            while not self._calls and self._intake and batch.free:
                item, retry = self._intake.popleft()
                try:
                    done = batch.admit(self._request(item, retry))
                except Exception as exc:  # this article's prompt or prefill: that article only
                    log.exception("admitting an article failed")
                    self._answer_error(item, f"{type(exc).__name__}: {exc}")
                    continue
                self.admitted += 1
                if done is not None:
                    outputs.append(done)
            if batch.active:
                self.active_histogram[batch.active] += 1
                outputs += batch.step()
                self.steps += 1
            if outputs:
                self._finish(outputs)

    def _batch_for_now(self) -> SlotBatch:
        if self._batch is None:
            max_new = self.engine.profile.max_new_tokens
            self._batch = self.engine.decoder.slot_batch(self.slots, max_new)
        return self._batch

    def _request(self, item: _Article, retry: bool) -> RowRequest:
        d = self.engine.decoder
        if not retry:
            item.admitted = time.perf_counter()
        return RowRequest(
            prompt_ids=item.pending.prompt.ids,
            max_new_tokens=self.engine.profile.max_new_tokens,
            suppress_first=d.retry_suppress if retry else d.first_suppress,
            repetition_penalty=RETRY_REPETITION_PENALTY if retry else 1.0,
            tag=(item, retry),
        )

    def _finish(self, outputs: list[RowOutput]) -> None:
        """Judge each ended row; a first pass the guard rejects goes round again as a retry
        (ahead of new arrivals), the rest get their Results, importance signals batched."""
        guard = self.engine.guard()
        done: list[_Article] = []
        for out in outputs:
            item, retry = out.tag
            item.prefill_s += out.prefill_s
            item.decode_s += out.decode_s
            item.rating_s += out.rating_s
            started = time.perf_counter()
            judged = guard.judge(self.engine.decoder.text(out.tokens), item.pending)
            item.attempts.append(judged)
            item.probs.append(out.rating_probs)
            item.guard_s += time.perf_counter() - started
            if not retry and guard.to_retry([judged]):
                self.engine.retries_total += 1
                self._intake.appendleft((item, True))
            else:
                done.append(item)
        if done:
            self._complete(done, guard)

    def _complete(self, items: list[_Article], guard: Guard) -> None:
        engine = self.engine
        versions = engine.versions
        chosen: list[tuple[Judged, torch.Tensor | None]] = []
        for item in items:
            started = time.perf_counter()
            judged, probs = item.attempts[0], item.probs[0]
            if len(item.attempts) > 1 and guard.prefers_retry(judged, item.attempts[1]):
                judged = item.attempts[1]
                probs = item.probs[1] if item.probs[1] is not None else probs
            if guard.needs_fallback(judged):
                judged = guard.extractive(item.pending, item.attempts)
            item.guard_s += time.perf_counter() - started
            chosen.append((judged, probs))
        started = time.perf_counter()
        signals = engine.scorer.signals([item.pending.article for item in items])
        embed_s = time.perf_counter() - started
        weights = engine.profile.importance.normalised()
        finished = time.perf_counter()
        for item, (judged, probs), signal in zip(items, chosen, signals, strict=True):
            if judged.summary is not None:
                engine.outcomes[
                    (judged.method, judged.report.verdict if judged.report else "none")
                ] += 1
            times = result_assembly.BatchTimes(
                called=item.submitted,
                batch_started=item.admitted,
                finished=finished,
                prefill_s=item.prefill_s,
                decode_s=item.decode_s,
                rating_s=item.rating_s,
                embed_s=embed_s,
                guard_s=item.guard_s,
            )
            outcome = result_assembly.outcome(
                item.pending.article, judged, probs, signal, weights, versions, times
            )
            self.finished += 1
            item.future.set_result(outcome)

    def _answer_error(self, item: _Article, message: str) -> None:
        if not item.future.done():
            error = result_assembly.error(
                item.pending.article, "internal_error", message, self.engine.versions
            )
            item.future.set_result(error)

    def _fail_all(self, message: str) -> None:
        """Answer everything in flight with an internal error (a bug, or shutting down)."""
        items = [item for item, _ in self._intake]
        if self._batch is not None:
            items += [row.request.tag[0] for row in self._batch.rows]
        self._intake.clear()
        self._batch = None
        for item in items:
            self._answer_error(item, message)


def _stop_at_exit(batcher: ContinuousBatcher) -> None:
    """Stop ``batcher``'s loop when the interpreter exits. The loop runs on a
    ``ThreadPoolExecutor`` thread, which the interpreter joins at exit; ``atexit`` handlers run
    only after that join, so a loop nobody stopped would hang the exit. ``concurrent.futures``
    registers its own exit hook the same way (``threading._register_atexit``, which runs before
    threads are joined); a weak reference keeps the hook from keeping the engine alive."""
    ref = weakref.ref(batcher)

    def stop() -> None:
        live = ref()
        if live is not None:
            live.stop()

    threading._register_atexit(stop)  # type: ignore[attr-defined]
