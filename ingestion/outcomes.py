"""What polling reports: the outcome of one feed (``FeedReport``) and of one poll over every
due feed (``PollSummary``), as the CLI, the actor's status and the logs show them.

Outcome names are the fetcher's (``FetchOutcome`` values: ``http_error``, ``gone``, ...) plus
the ones that only exist past the fetch, defined here.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

OK = "ok"
NOT_MODIFIED = "not_modified"
PARSE_ERROR = "parse_error"
INTERNAL_ERROR = "internal_error"
DB_UNAVAILABLE = "db_unavailable"


@dataclass(slots=True)
class FeedReport:
    feed_id: int
    url: str
    outcome: str
    http_status: int | None = None
    new: int = 0
    duplicate: int = 0
    copies: int = 0
    rejected: int = 0
    reason: str | None = None
    elapsed_s: float = 0.0
    fetch_s: float = 0.0
    rejected_reasons: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class PollSummary:
    feeds: Counter[str] = field(default_factory=Counter)  # outcome -> feeds
    new: int = 0
    duplicate: int = 0
    copies: int = 0
    rejected: int = 0
    rejected_reasons: Counter[str] = field(default_factory=Counter)
    reports: list[FeedReport] = field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def polled(self) -> int:
        return sum(self.feeds.values())

    @property
    def feeds_ok(self) -> int:
        return self.feeds[OK]

    @property
    def feeds_not_modified(self) -> int:
        return self.feeds[NOT_MODIFIED]

    @property
    def feeds_failed(self) -> int:
        return self.polled - self.feeds_ok - self.feeds_not_modified

    def add(self, report: FeedReport) -> None:
        self.feeds[report.outcome] += 1
        self.new += report.new
        self.duplicate += report.duplicate
        self.copies += report.copies
        self.rejected += report.rejected
        self.rejected_reasons.update(report.rejected_reasons)
        self.reports.append(report)

    def as_dict(self, *, reports: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "feeds": dict(self.feeds),
            "feeds_ok": self.feeds_ok,
            "feeds_not_modified": self.feeds_not_modified,
            "feeds_failed": self.feeds_failed,
            "articles_new": self.new,
            "articles_duplicate": self.duplicate,
            "articles_copies": self.copies,
            "articles_rejected": self.rejected,
            "rejected_reasons": dict(self.rejected_reasons),
            "elapsed_s": round(self.elapsed_s, 3),
        }
        if reports:
            out["reports"] = [asdict(r) for r in self.reports]
        return out
