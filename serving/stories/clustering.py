"""The story assignment rule, as pure functions over articles and vectors (no database):
the order articles are assigned in, the in-memory nearest-story search of the window, when an
article joins the nearest story, and how a story's centroid moves.
:func:`serving.stories.store.assign_articles` applies it inside its transaction."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

import numpy as np

from core.article import Article
from serving.stories.embedder import EMBEDDING_DIM

JoinedBy = Literal["founder", "duplicate", "similar"]


@dataclass
class AssignReport:
    assigned: int = 0
    by: Counter[str] = field(default_factory=Counter)  # founder / duplicate / similar
    stories: set[int] = field(default_factory=set)


def unit(vector: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm > 0 else vector


def assignment_order(articles: list[Article]) -> list[int]:
    """Indexes of ``articles``: originals before their copies (a copy can then join its
    original's story in the same batch), then by publication time."""
    return sorted(
        range(len(articles)),
        key=lambda i: (
            articles[i].duplicate_of is not None,
            articles[i].published or datetime.now(UTC),
            articles[i].id or 0,
        ),
    )


def similar_or_founder(
    nearest: tuple[int, float] | None, threshold: float
) -> tuple[int | None, float, JoinedBy]:
    """(story id, similarity, joined_by) of an article that is no known copy: the nearest
    story of the window when it is at least ``threshold`` similar, else a story of its own
    (id None: to be founded)."""
    if nearest is not None and nearest[1] >= threshold:
        return nearest[0], nearest[1], "similar"
    return None, 1.0, "founder"


def joined_centroid(old: np.ndarray, n_articles: int, vector: np.ndarray) -> np.ndarray:
    """A story's centroid once ``vector`` joins its ``n_articles``: their running mean."""
    return (old * n_articles + vector) / (n_articles + 1)


class Candidates:
    """The window's stories in memory (the numpy path): centroids and time spans, in arrays
    that grow by doubling, so a batch that founds many stories copies little."""

    def __init__(
        self, ids: list[int], centroids: np.ndarray, first: list[float], last: list[float]
    ) -> None:
        n = len(ids)
        capacity = max(16, 2 * n)
        self.n = n
        self.ids = np.zeros(capacity, dtype=np.int64)
        self.centroids = np.zeros((capacity, EMBEDDING_DIM), dtype=np.float32)
        self.units = np.zeros((capacity, EMBEDDING_DIM), dtype=np.float32)  # for the search
        self.first = np.zeros(capacity)  # epoch seconds
        self.last = np.zeros(capacity)
        if n:
            self.ids[:n] = ids
            self.centroids[:n] = centroids
            norms = np.linalg.norm(self.centroids[:n], axis=1, keepdims=True)
            self.units[:n] = self.centroids[:n] / np.where(norms > 0, norms, 1.0)
            self.first[:n] = first
            self.last[:n] = last
        self._where = {int(i): k for k, i in enumerate(ids)}

    def add(self, story_id: int, centroid: np.ndarray, at: float) -> None:
        if self.n == len(self.ids):
            grow = len(self.ids)
            self.ids = np.concatenate([self.ids, np.zeros(grow, dtype=np.int64)])
            self.centroids = np.vstack([self.centroids, np.zeros_like(self.centroids)])
            self.units = np.vstack([self.units, np.zeros_like(self.units)])
            self.first = np.concatenate([self.first, np.zeros(grow)])
            self.last = np.concatenate([self.last, np.zeros(grow)])
        k = self.n
        self.ids[k], self.centroids[k], self.first[k], self.last[k] = story_id, centroid, at, at
        self.units[k] = unit(centroid)
        self._where[story_id] = k
        self.n += 1

    def update(self, story_id: int, centroid: np.ndarray, at: float) -> None:
        k = self._where.get(story_id)
        if k is None:
            self.add(story_id, centroid, at)
            return
        self.centroids[k] = centroid
        self.units[k] = unit(centroid)
        self.first[k] = min(self.first[k], at)
        self.last[k] = max(self.last[k], at)

    def nearest(self, vector: np.ndarray, at: float, window_s: float) -> tuple[int, float] | None:
        """(story id, cosine) of the nearest story alive within the window of ``at``."""
        n = self.n
        if n == 0:
            return None
        alive = (self.last[:n] >= at - window_s) & (self.first[:n] <= at + window_s)
        if not alive.any():
            return None
        sims = self.units[:n] @ vector
        sims = np.where(alive, sims, -np.inf)
        best = int(np.argmax(sims))
        return int(self.ids[best]), float(sims[best])
