"""What produced a Result: model, adapter and prompt version, and the cache key built on them.

A Result is only reused for the same content under the same three versions: a new adapter or
prompt makes every earlier summary stale at once, without deleting anything.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from serving.model.result import ArticleError, Result


@dataclass(frozen=True, slots=True)
class Versions:
    model_id: str
    adapter_id: str | None
    prompt_version: str

    @property
    def adapter_key(self) -> str:
        """The adapter as stored: '' for the base model (a NULL would defeat unique keys)."""
        return self.adapter_id or ""

    @classmethod
    def of(cls, outcome: Result | ArticleError) -> Versions | None:
        """The versions an outcome carries (an early ArticleError may carry none)."""
        if outcome.model_id is None or outcome.prompt_version is None:
            return None
        return cls(outcome.model_id, outcome.adapter_id, outcome.prompt_version)

    def as_dict(self) -> dict[str, str | None]:
        return {
            "model_id": self.model_id,
            "adapter_id": self.adapter_id,
            "prompt_version": self.prompt_version,
        }


def cache_key(content_hash: str, versions: Versions) -> str:
    """The cache key of one article's Result: its content hash plus the versions.

    ``content_hash`` is the Article's (normalized title and text, sha256), so the same story
    from two feeds, or posted twice with other whitespace, shares one entry.
    """
    return (
        f"newsdesk:result:{versions.prompt_version}:{versions.model_id}:"
        f"{versions.adapter_key or '-'}:{content_hash}"
    )


def summarizer_versions(summarizer: Any) -> Callable[[], Awaitable[Versions]]:
    """How a deployment asks the Summarizer (its DeploymentHandle) for the versions it serves;
    see :class:`serving.summaries.lookup.VersionTracker` for when it asks."""

    async def fetch() -> Versions:
        return await summarizer.versions.remote()

    return fetch
