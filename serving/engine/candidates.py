"""Sampled candidates (:meth:`SummarizeEngine.sample`): training's self-verified teacher keeps
the best of an article's candidates that passes the verifier (:mod:`train.teachers`)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from serving.engine.batching import Pending
from serving.engine.guard import verify
from serving.model import verifier
from serving.model.output_parser import OutputError, parse_output


@dataclass(frozen=True)
class Candidate:
    """One sampled summary of an article (:meth:`SummarizeEngine.sample`): the seed that drew
    it, the raw text, the parsed and repaired summary (None when it does not parse) and the
    verifier's report on it."""

    seed: int
    text: str
    summary: str | None
    report: verifier.VerifierReport | None

    @property
    def passed(self) -> bool:
        return self.report is not None and self.report.passed


def candidate_seed(seed: int, content_hash: str, index: int) -> int:
    """The seed of an article's ``index``-th candidate: a function of the run's seed and the
    article's content only, so a rerun (or a resumed one) draws the same candidates."""
    digest = hashlib.sha256(f"{seed}:{content_hash}:{index}".encode()).hexdigest()
    return int(digest[:8], 16)


def judge_candidate(seed: int, text: str, item: Pending, min_support: float) -> Candidate:
    """Parse, repair and verify one sampled text. No retry and no fallback: the teacher keeps
    only candidates that pass, and draws new ones otherwise."""
    summary, report = None, None
    try:
        parsed = parse_output(text, item.article)
    except OutputError:
        pass
    else:
        summary, report = verify(parsed, item, min_support)
    return Candidate(seed, text, summary, report)
