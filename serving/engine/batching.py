"""Micro-batching: articles' prompts grouped by length, and failures contained to one article.

The engine decodes ``max_batch_size`` prompts at a time. Sorted longest first, each
micro-batch holds similar lengths, so little of it is padding. A micro-batch that raises is
redone one article at a time, so that one bad article cannot take the others down.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

from core.article import Article
from serving.model import prompt, verifier

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")


@dataclass
class Pending:
    """One article on its way through the engine: its place in the call, its prompt and the
    evidence its summary is verified against."""

    index: int
    article: Article
    prompt: prompt.Prompt
    evidence: verifier.Evidence

    @classmethod
    def of(cls, index: int, article: Article, built: prompt.Prompt) -> Pending:
        return cls(index, article, built, verifier.Evidence.of(article))


def micro_batches(
    items: Sequence[T], size: int, prompt_len: Callable[[T], int]
) -> Iterator[list[T]]:
    """``items`` longest prompt first (a stable sort: input order among equal lengths), in
    micro-batches of ``size``."""
    ordered = sorted(items, key=lambda item: -prompt_len(item))
    for start in range(0, len(ordered), size):
        yield ordered[start : start + size]


def contained(
    chunk: list[T], run: Callable[[list[T]], list[R]], failed: Callable[[T, Exception], R]
) -> list[R]:
    """``run(chunk)``; when it raises, each item of the chunk run alone, and an item that
    still raises answered by ``failed(item, exception)``."""
    try:
        return run(chunk)
    except Exception as exc:
        log.exception("micro-batch of %d failed", len(chunk))
        if len(chunk) == 1:
            return [failed(chunk[0], exc)]
        # Isolate the culprit: redo each article alone.
        return [contained([item], run, failed)[0] for item in chunk]
