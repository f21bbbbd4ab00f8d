"""Custom metrics: Ray's (exported to the dashboard / Prometheus) plus in-process summaries.

``ray.util.metrics`` objects are cheap no-ops outside a Ray worker, so the same code runs in
unit tests and in replicas. Ray aggregates counters and histograms across replicas for the
dashboard; ``/v1/stats`` needs numbers it can compute on request (percentiles, histograms),
kept here per process in bounded windows.
"""

from __future__ import annotations

import math
import threading
from collections import Counter as _Counter
from collections import deque
from functools import cache

from ray.util import metrics as ray_metrics

from serving.model.result import Result

LATENCY_BOUNDARIES_MS = [
    1,
    2,
    5,
    10,
    20,
    50,
    100,
    250,
    500,
    1_000,
    2_500,
    5_000,
    10_000,
    30_000,
    60_000,
    120_000,
]
BATCH_BOUNDARIES = [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64]


@cache
def http_requests() -> ray_metrics.Counter:
    return ray_metrics.Counter(
        "newsdesk_http_requests_total",
        description="HTTP requests by route template, method and status code.",
        tag_keys=("route", "method", "status"),
    )


@cache
def http_latency() -> ray_metrics.Histogram:
    return ray_metrics.Histogram(
        "newsdesk_http_request_latency_ms",
        description="HTTP request latency in the ingress (ms), by route template.",
        boundaries=LATENCY_BOUNDARIES_MS,
        tag_keys=("route",),
    )


@cache
def cache_events() -> ray_metrics.Counter:
    return ray_metrics.Counter(
        "newsdesk_cache_events_total",
        description="Result cache lookups: hit_local, hit_redis, hit_db, miss; and fallback "
        "(Redis unreachable, answered from the local tier).",
        tag_keys=("event",),
    )


@cache
def batch_sizes() -> ray_metrics.Histogram:
    return ray_metrics.Histogram(
        "newsdesk_summarizer_batch_size",
        description="Articles per @serve.batch call of the Summarizer.",
        boundaries=BATCH_BOUNDARIES,
    )


@cache
def batch_latency() -> ray_metrics.Histogram:
    return ray_metrics.Histogram(
        "newsdesk_summarizer_batch_latency_ms",
        description="Engine time per Summarizer batch (ms).",
        boundaries=LATENCY_BOUNDARIES_MS,
    )


@cache
def queue_depth() -> ray_metrics.Gauge:
    return ray_metrics.Gauge(
        "newsdesk_summarizer_queue_depth",
        description="Articles waiting in a Summarizer replica for a batch slot.",
    )


@cache
def loop_articles() -> ray_metrics.Counter:
    return ray_metrics.Counter(
        "newsdesk_loop_articles_total",
        description="Articles the summarization loop sent through the Summarizer, by outcome.",
        tag_keys=("outcome",),
    )


@cache
def summaries() -> ray_metrics.Counter:
    return ray_metrics.Counter(
        "newsdesk_summaries_total",
        description="Results served by the Summarizer, by method (abstractive: the model's "
        "summary; extractive: the article's sentences) and the verifier's verdict on the "
        "served summary (none: guard off).",
        tag_keys=("method", "verdict"),
    )


@cache
def verifier_failures() -> ray_metrics.Counter:
    return ray_metrics.Counter(
        "newsdesk_verifier_failures_total",
        description="Results whose model summary failed the verifier, by failure code "
        "(low_support, unsupported_name, ..., unparsable); once per Result and code.",
        tag_keys=("failure",),
    )


def model_failures(result: Result) -> list[str]:
    """Why the verifier failed the model's summary behind ``result`` (codes, each once): its
    report's failures for a served model summary (guard mode ``report``), the codes of the
    rejected attempts for an extractive Result; empty when the model's summary passed."""
    report = result.verification
    if report is None:
        return []
    if result.method == "abstractive":
        return list(dict.fromkeys(report.failures))
    return list(report.rejected_failures)


def count_results(results: list[Result]) -> _Counter[str]:
    """Count served Results in ``summaries`` and ``verifier_failures``; returns the failure
    codes counted."""
    failures: _Counter[str] = _Counter()
    for result in results:
        verdict = result.verification.verdict if result.verification else "none"
        summaries().inc(tags={"method": result.method, "verdict": verdict})
        failures.update(model_failures(result))
    for code, n in failures.items():
        verifier_failures().inc(n, tags={"failure": code})
    return failures


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of an already sorted list (None when empty)."""
    if not sorted_values:
        return None
    rank = math.ceil(q / 100 * len(sorted_values))
    return sorted_values[max(0, min(len(sorted_values), rank) - 1)]


class LatencyWindow:
    """The last ``size`` latencies per key, summarized as percentiles on demand."""

    def __init__(self, size: int = 10_000) -> None:
        self._size = size
        self._values: dict[str, deque[float]] = {}
        self._counts: _Counter[str] = _Counter()
        self._lock = threading.Lock()

    def observe(self, key: str, value_ms: float) -> None:
        with self._lock:
            window = self._values.get(key)
            if window is None:
                window = self._values[key] = deque(maxlen=self._size)
            window.append(value_ms)
            self._counts[key] += 1

    def summary(self) -> dict[str, dict[str, float | int | None]]:
        with self._lock:
            snapshot = {k: sorted(v) for k, v in self._values.items()}
            counts = dict(self._counts)
        return {
            key: {
                "count": counts[key],
                "window": len(values),
                "p50_ms": percentile(values, 50),
                "p90_ms": percentile(values, 90),
                "p99_ms": percentile(values, 99),
                "max_ms": values[-1] if values else None,
            }
            for key, values in sorted(snapshot.items())
        }
