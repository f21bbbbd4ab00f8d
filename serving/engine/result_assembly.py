"""Result assembly: a judged summary, its importance and its micro-batch's timings -> a Result.

Importance blends the model's own rating (its next-token probabilities after the rating
question) with the embedding prior (:mod:`serving.engine.importance`), with the profile's weights.
Every Result and ArticleError carries the engine's versions (:mod:`serving.engine.identity`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from core.article import Article
from serving.engine.guard import Judged
from serving.engine.importance import ArticleSignals, blend, model_rating_to_score
from serving.model.result import ArticleError, ImportanceParts, Result, Timings
from serving.model.versions import Versions


@dataclass
class BatchTimes:
    """Where one micro-batch's time went, in ``time.perf_counter`` seconds: from the
    ``summarize`` call (``called``) to the Results (``finished``)."""

    called: float
    batch_started: float
    finished: float
    prefill_s: float
    decode_s: float
    rating_s: float
    embed_s: float
    guard_s: float

    def timings(self) -> Timings:
        return Timings(
            queue_ms=round((self.batch_started - self.called) * 1000, 1),
            prefill_ms=round(self.prefill_s * 1000, 1),
            generate_ms=round(self.decode_s * 1000, 1),
            importance_ms=round((self.rating_s + self.embed_s) * 1000, 1),
            guard_ms=round(self.guard_s * 1000, 1),
            total_ms=round((self.finished - self.called) * 1000, 1),
        )


def error(article: Article, code: str, message: str, versions: Versions) -> ArticleError:
    return ArticleError(
        article_id=article.id,
        content_hash=article.content_hash,
        code=code,  # type: ignore[arg-type]
        message=message,
        model_id=versions.model_id,
        adapter_id=versions.adapter_id,
        prompt_version=versions.prompt_version,
    )


def outcome(
    article: Article,
    judged: Judged,
    rating_probs: torch.Tensor | None,
    signals: ArticleSignals,
    weights: tuple[float, float],
    versions: Versions,
    times: BatchTimes,
) -> Result | ArticleError:
    """The Result of one article (an ArticleError when the guard left it no summary).
    ``rating_probs``: the model's probabilities over the ratings 1..9 (None: no rating)."""
    if judged.summary is None:
        return error(
            article, "generation_failed", f"no usable summary ({judged.rejection})", versions
        )
    model_score = model_rating_to_score(rating_probs) if rating_probs is not None else 0.0
    return Result(
        article_id=article.id,
        content_hash=article.content_hash,
        summary=judged.summary,
        method=judged.method,
        verification=judged.report,
        importance=blend(model_score, signals.prior, weights),
        importance_parts=ImportanceParts(
            model=round(min(100.0, max(0.0, model_score)), 2),
            prior=signals.prior,
            model_weight=round(weights[0], 4),
            prior_weight=round(weights[1], 4),
            reasons=signals.reasons,
        ),
        topics=signals.topics,
        model_id=versions.model_id,
        adapter_id=versions.adapter_id,
        prompt_version=versions.prompt_version,
        timings=times.timings(),
    )
