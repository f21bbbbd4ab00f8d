"""Title + lead embeddings of articles for grouping them into stories: the engine's sentence
embeddings (:class:`serving.engine.importance.ImportanceScorer`), so the story search sees an
article as the importance prior does, and one model serves both."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from core.article import Article

EMBEDDING_DIM = 384  # all-MiniLM-L6-v2


class StoryEmbedder:
    """Loaded on first use (the model is imported only where stories are grouped),
    thread-safe (embedding runs in a worker thread)."""

    def __init__(self) -> None:
        self._scorer: Any = None
        self._lock = threading.Lock()

    def _get(self) -> Any:
        with self._lock:
            if self._scorer is None:
                from serving.engine.importance import ImportanceScorer

                self._scorer = ImportanceScorer()
            return self._scorer

    def embed(self, articles: list[Article]) -> np.ndarray:
        """One L2-normalised row per article (title + lead, as the importance prior sees it)."""
        from serving.engine.importance import article_text

        if not articles:
            return np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
        scorer = self._get()
        with self._lock:  # one forward pass at a time on the shared model
            vectors = scorer.embed([article_text(a) for a in articles])
        return vectors.numpy().astype(np.float32)
