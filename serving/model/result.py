"""The Result of summarizing one article, and the per-article error: the engine's output contract.

Both models are always schema-valid: the engine builds them from parsed, checked output only
(never raw model text), so the Serve app, the cache and the store can pass them on as JSON.

**Importance** is one float on a 0-100 scale, the one scale of the product:

- 0-20: trivial (lifestyle, curiosities, a local bakery's new bread),
- 20-40: minor local news, routine announcements,
- 40-60: ordinary news of regional interest,
- 60-80: significant national news (elections, major court rulings, big company failures),
- 80-100: major events with wide human consequences (deadly disasters, wars, historic firsts).

It is a blend (weights from the model profile, normalised to 1) of two signals, both 0-100:

- ``prior``: sentence embeddings (all-MiniLM-L6-v2) of the article against short descriptions of
  important and unimportant news, mapped through a fixed calibration (see
  :mod:`serving.engine.importance`): works at any model size.
- ``model``: the summarization model's own rating, the expected value of its next-token
  probabilities over the score tokens "1".."9" after a rating instruction, mapped 1..9 -> 0..100.
  Deterministic, one forward pass, never parsed from free text.

``importance_parts`` keeps both signals and the weights so a client can see why.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from serving.model.verifier import VerifierReport

ErrorCode = Literal[
    "empty_input",  # no usable text after normalisation (empty, whitespace, markup only)
    "invalid_input",  # not text (binary garbage) or otherwise unusable
    "generation_failed",  # no summary at all: the model's failed and the text has no sentence
    "internal_error",  # an unexpected exception for this article (the batch goes on)
]


class Timings(BaseModel):
    """Milliseconds spent on one article. Batched stages are the batch's time (shared)."""

    model_config = ConfigDict(extra="forbid")

    queue_ms: float = Field(default=0.0, ge=0, description="Waiting before its batch started.")
    prefill_ms: float = Field(default=0.0, ge=0, description="Prompt forward pass (its batch).")
    generate_ms: float = Field(default=0.0, ge=0, description="Decoding (its batch).")
    importance_ms: float = Field(default=0.0, ge=0, description="Rating + embeddings (batch).")
    guard_ms: float = Field(
        default=0.0, ge=0, description="Parsing, verifying and any extractive fallback (batch)."
    )
    total_ms: float = Field(default=0.0, ge=0, description="From summarize() call to result.")


class ImportanceParts(BaseModel):
    """Why an article got its importance: the two signals and the weights used."""

    model_config = ConfigDict(extra="forbid")

    model: float = Field(ge=0, le=100, description="The LLM's rating (expected value), 0-100.")
    prior: float = Field(ge=0, le=100, description="Embedding prior, 0-100.")
    model_weight: float = Field(ge=0, le=1)
    prior_weight: float = Field(ge=0, le=1)
    reasons: list[str] = Field(
        default_factory=list, description="Human-readable: the closest reference descriptions."
    )


class Result(BaseModel):
    """A faithful short summary of one article with its importance and topics.

    ``summary`` is either the model's (``method`` abstractive, passed by the verifier) or the
    article's own lead sentences (extractive); ``verification`` says what was checked.
    """

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    kind: Literal["result"] = "result"
    article_id: int | None = None
    content_hash: str
    summary: str = Field(min_length=1, max_length=2_000, description="1-3 sentences.")
    method: Literal["abstractive", "extractive"] = Field(
        default="abstractive",
        description="abstractive: the model's summary, passed by the verifier; extractive: "
        "the article's own sentences, because the model's summaries did not pass.",
    )
    verification: VerifierReport | None = Field(
        default=None,
        description="The verifier's report on this summary (None only on Results stored "
        "before the verifier existed).",
    )
    importance: float = Field(ge=0, le=100, description="0-100; see the module docstring.")
    importance_parts: ImportanceParts
    topics: list[str] = Field(default_factory=list, max_length=3)
    model_id: str
    adapter_id: str | None = None
    prompt_version: str
    timings: Timings = Field(default_factory=Timings)


class ArticleError(BaseModel):
    """Why one article got no Result. Other articles of the same batch are unaffected."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    kind: Literal["error"] = "error"
    article_id: int | None = None
    content_hash: str
    code: ErrorCode
    message: str
    model_id: str | None = None
    adapter_id: str | None = None
    prompt_version: str | None = None


Outcome = Result | ArticleError
"""What summarizing one article gives: its Result or why it has none (``kind`` tells which).
Defined here only; :data:`serving.http.schemas.TaggedOutcome` is its discriminated form for the
API."""


class SummarizerUnavailable(Exception):
    """No outcome at all: the Summarizer could not answer (no replica, a replica lost twice,
    its queue full) or, with ``timed_out``, not within the API's time limit.

    The one form "unavailable" takes from the lookup to the HTTP reply: raised by the lookup,
    returned as is across the CacheLookup handle (a raised one would arrive as a RayTaskError,
    see :mod:`serving.deployments.cache_lookup`), answered 503 (504 when timed out) by
    :mod:`serving.http.errors`, and written in place as :meth:`as_error` in batch and stream
    replies. Pickles with its fields (Exception keeps ``__dict__``).
    """

    def __init__(self, reason: str, *, timed_out: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.timed_out = timed_out

    @property
    def message(self) -> str:
        return self.reason if self.timed_out else f"summarizer unavailable: {self.reason}"

    def as_error(self, article_id: int | None, content_hash: str) -> ArticleError:
        """The per-article form, for replies that answer each article in place."""
        return ArticleError(
            article_id=article_id,
            content_hash=content_hash,
            code="internal_error",
            message=self.message,
        )
