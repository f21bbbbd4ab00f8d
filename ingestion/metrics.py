"""Ingestion metrics: ``ray.util.metrics`` inside Ray (the dashboard and Prometheus show them),
plain in-process counters always (``status()`` and tests read those).

Outside a Ray worker or driver (``newsdesk ingest --once`` in-process) only the in-process
counters exist: creating Ray metrics there would need a running Ray.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

log = logging.getLogger(__name__)

LATENCY_BOUNDARIES_S = [0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]


def _ray_metrics() -> tuple[Any, Any, Any] | None:
    try:
        import ray

        if not ray.is_initialized():
            return None
        from ray.util.metrics import Counter as RayCounter
        from ray.util.metrics import Histogram

        return (
            RayCounter(
                "newsdesk_feed_fetches",
                description="Feed polls by outcome (ok, not_modified, timeout, parse_error...).",
                tag_keys=("outcome",),
            ),
            RayCounter(
                "newsdesk_articles",
                description="Feed entries by outcome (new, duplicate, copy, rejected).",
                tag_keys=("outcome",),
            ),
            Histogram(
                "newsdesk_fetch_latency_seconds",
                description="Time to fetch one feed, redirects included.",
                boundaries=LATENCY_BOUNDARIES_S,
                tag_keys=("outcome",),
            ),
        )
    except Exception as exc:
        log.warning("Ray metrics unavailable: %s", exc)
        return None


class IngestMetrics:
    def __init__(self) -> None:
        self.fetches: Counter[str] = Counter()
        self.articles: Counter[str] = Counter()
        self.latency_sum_s = 0.0
        self._ray = _ray_metrics()

    @property
    def exported_to_ray(self) -> bool:
        return self._ray is not None

    def fetch(self, outcome: str, latency_s: float) -> None:
        self.fetches[outcome] += 1
        self.latency_sum_s += latency_s
        if self._ray is not None:
            try:
                self._ray[0].inc(1, tags={"outcome": outcome})
                self._ray[2].observe(latency_s, tags={"outcome": outcome})
            except Exception:
                log.debug("metric export failed", exc_info=True)

    def article(self, outcome: str, n: int) -> None:
        if n <= 0:
            return
        self.articles[outcome] += n
        if self._ray is not None:
            try:
                self._ray[1].inc(n, tags={"outcome": outcome})
            except Exception:
                log.debug("metric export failed", exc_info=True)

    def snapshot(self) -> dict[str, Any]:
        return {
            "fetches": dict(self.fetches),
            "articles": dict(self.articles),
            "fetch_latency_sum_s": round(self.latency_sum_s, 3),
            "exported_to_ray": self.exported_to_ray,
        }
