"""The guard (the profile's ``guard``): what the engine serves when the model's output is not fit.

Each output is parsed (:mod:`serving.model.output_parser`), its phrasing repaired and checked
against its article (:mod:`serving.model.verifier`). An output that does not parse (empty, an echo
of the prompt) gets a second decode (``retry: failed`` retries every failing one); a summary that
still fails is replaced by the article's own most central lead sentences
(:mod:`serving.engine.extractive`), and the report says why. ``mode``: ``enforce`` serves only
summaries that pass; ``report`` serves the model's summary whatever its report says; ``off`` serves
the model alone, unverified.

The guard decides; the engine decodes (:mod:`serving.engine.generate`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from serving.engine.batching import Pending
from serving.engine.extractive import Embed, extractive_summary
from serving.model import verifier
from serving.model.output_parser import OutputError, ParsedOutput, parse_output
from serving.model.profiles import GuardOptions


@dataclass
class Judged:
    """One article's summary so far: the text and its report, or why there is none yet.
    ``rejection`` is None when the summary may be served."""

    summary: str | None
    report: verifier.VerifierReport | None
    rejection: str | None
    method: Literal["abstractive", "extractive"] = "abstractive"

    @property
    def failures(self) -> list[str]:
        """The failure codes of a rejected summary ("unparsable" when it did not parse)."""
        return list(self.report.failures) if self.report is not None else ["unparsable"]


def verify(
    parsed: ParsedOutput, item: Pending, min_support: float
) -> tuple[str, verifier.VerifierReport]:
    """Repair and verify a parsed summary; the report lists the parser's repairs too."""
    summary, report = verifier.check(parsed.summary, item.evidence, min_support=min_support)
    report.repairs = [*parsed.repairs, *report.repairs]
    return summary, report


@dataclass(frozen=True)
class Guard:
    """The guard of one profile. ``budget_tokens`` (the profile's ``max_new_tokens``),
    ``count_tokens`` and ``embed`` are for the extractive fallback."""

    options: GuardOptions
    budget_tokens: int
    count_tokens: Callable[[str], int]
    embed: Embed

    def judge(self, text: str, item: Pending) -> Judged:
        """Parse one generated text and check it against its article."""
        try:
            parsed = parse_output(text, item.article)
        except OutputError as exc:
            return Judged(None, None, f"unparsable: {exc}")
        if self.options.mode == "off":
            return Judged(parsed.summary, None, None)
        summary, report = verify(parsed, item, self.options.min_support)
        acceptable = report.passed or self.options.mode == "report"
        return Judged(summary, report, None if acceptable else "; ".join(report.reasons))

    def to_retry(self, judged: list[Judged]) -> list[int]:
        """The rows whose first pass gets a second decode."""
        retry_all = self.options.retry == "failed"
        return [
            row for row, j in enumerate(judged) if j.rejection and (j.summary is None or retry_all)
        ]

    @staticmethod
    def prefers_retry(first: Judged, second: Judged) -> bool:
        """A retry that passes, or the only parsed text the model gave, replaces the first."""
        return second.rejection is None or first.summary is None

    def needs_fallback(self, judged: Judged) -> bool:
        """enforce: what failed is replaced; report and off: only what did not parse."""
        return judged.rejection is not None and (
            self.options.mode == "enforce" or not judged.summary
        )

    def extractive(self, item: Pending, attempts: list[Judged]) -> Judged:
        """The article's own sentences, with the reasons the model's ``attempts`` failed."""
        rejected = [
            f"{'first' if n == 0 else 'retry'}: {a.rejection}" for n, a in enumerate(attempts)
        ]
        summary = extractive_summary(
            item.article,
            budget_tokens=self.budget_tokens,
            count_tokens=self.count_tokens,
            embed=self.embed,
            max_sentences=self.options.extractive_sentences,
            window=self.options.extractive_window,
        )
        if summary is None:
            return Judged(None, None, "; ".join(rejected) or "no sentence to extract")
        report = verifier.verify(summary, item.evidence, min_support=self.options.min_support)
        report.rejected = rejected
        codes = dict.fromkeys(code for a in attempts for code in a.failures)
        report.rejected_failures = list(codes)  # type: ignore[arg-type]
        return Judged(summary, report, None, method="extractive")
