"""What a summarization engine offers its callers (the Summarizer deployment, the CLI, training).

:class:`~serving.engine.engine.SummarizeEngine` is the one implementation; callers that only
summarize, sample, swap adapters and report depend on this protocol, not on how the engine
loads, batches or decodes. The engine owns its identity: ``versions`` is what every Result it
returns carries, so callers never build model ids themselves.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from core.article import Article
from serving.engine.candidates import Candidate
from serving.model.result import ArticleError, Result
from serving.model.versions import Versions


@runtime_checkable
class Engine(Protocol):
    @property
    def versions(self) -> Versions:
        """Model, adapter and prompt version of what the engine serves now."""
        ...

    @property
    def max_batch_size(self) -> int:
        """Articles decoded together; a larger ``summarize`` call is split."""
        ...

    def summarize(
        self,
        articles: Sequence[Article],
        *,
        max_new_tokens: int | None = None,
        min_new_tokens: int = 0,
    ) -> list[Result | ArticleError]:
        """One Result or ArticleError per article, in input order."""
        ...

    def sample(
        self,
        articles: Sequence[Article],
        *,
        k: int,
        temperature: float = 0.7,
        top_p: float = 0.9,
        seed: int = 0,
        max_new_tokens: int | None = None,
    ) -> list[list[Candidate] | ArticleError]:
        """``k`` verified sampled summaries of each article (an ArticleError: unusable input)."""
        ...

    def set_adapter(self, adapter: str | Path | None) -> None:
        """Serve the PEFT LoRA adapter in this folder, or the base model (None)."""
        ...

    def info(self) -> dict[str, Any]:
        """The engine's versions, batch size and counters (summaries served, retries)."""
        ...
