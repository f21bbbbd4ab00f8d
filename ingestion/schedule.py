"""When a feed is polled next, and in which state it is left: the policy, as a pure function.

- ok / not modified: due again after the feed's interval; failures reset; a quarantined feed
  that answers is active again.
- 410 Gone: disabled (never polled again until enabled by hand).
- any other failure: one more failure in a row; due again after an exponential backoff
  (``backoff_base_s * 2**(failures-1)``, capped at ``backoff_max_s``), or after the server's
  ``Retry-After`` when it is later; after ``max_consecutive_failures`` in a row the feed is
  quarantined: probed only every ``backoff_max_s``, with the reason kept in ``last_error``.
Delays are seconds from "now" as PostgreSQL sees it: all pollers share one clock.
"""

from __future__ import annotations

from dataclasses import dataclass

from ingestion.settings import IngestionSettings

ACTIVE = "active"
QUARANTINED = "quarantined"
DISABLED = "disabled"


@dataclass(slots=True)
class FeedState:
    status: str
    due_in_s: float
    last_outcome: str
    consecutive_failures: int
    last_error: str | None
    success: bool


def after_success(outcome: str, *, interval_s: int, note: str | None = None) -> FeedState:
    return FeedState(
        status=ACTIVE,
        due_in_s=float(interval_s),
        last_outcome=outcome,
        consecutive_failures=0,
        last_error=note,
        success=True,
    )


def after_failure(
    outcome: str,
    reason: str,
    *,
    failures_before: int,
    settings: IngestionSettings,
    retry_after_s: float | None = None,
    gone: bool = False,
) -> FeedState:
    failures = failures_before + 1
    if gone:
        return FeedState(
            status=DISABLED,
            due_in_s=float(settings.backoff_max_s),
            last_outcome=outcome,
            consecutive_failures=failures,
            last_error=f"{reason}: the feed is gone, disabled (`newsdesk feeds enable` to retry)",
            success=False,
        )
    backoff = min(settings.backoff_base_s * 2 ** min(failures - 1, 30), settings.backoff_max_s)
    if retry_after_s is not None:
        backoff = max(backoff, retry_after_s)
    if failures >= settings.max_consecutive_failures:
        return FeedState(
            status=QUARANTINED,
            due_in_s=float(max(settings.backoff_max_s, backoff)),
            last_outcome=outcome,
            consecutive_failures=failures,
            last_error=f"quarantined after {failures} failures in a row; last: {reason}",
            success=False,
        )
    return FeedState(
        status=ACTIVE,
        due_in_s=float(backoff),
        last_outcome=outcome,
        consecutive_failures=failures,
        last_error=reason,
        success=False,
    )
