"""Stories: same-story articles from different feeds grouped into one, ranked for the digest.

**Grouping** (incremental, :mod:`serving.stories.worker`): each stored article, oldest first,
joins a story once:

1. ``duplicate``: ingestion marked it a copy of an article (same content hash from another
   feed, ``articles.duplicate_of``) that already belongs to a story: it joins that story;
2. ``similar``: else its sentence embedding (:mod:`serving.stories.embedder`: all-MiniLM-L6-v2
   over title + lead, the very embedding code of :mod:`serving.engine.importance`) is compared with
   the centroids of the stories alive within ``story_window_h`` of its publication time; if
   the nearest is at least ``story_similarity_threshold`` (cosine) it joins that story;
3. ``founder``: else it starts a story of its own.

The rule is :mod:`serving.stories.clustering` (pure functions); :mod:`serving.stories.store`
applies it in one transaction. The search is exact (every story of the window): with pgvector
in SQL (``<=>``), without it in numpy over the window's centroids, read once per batch. No
approximate (HNSW) index: it would filter by time *after* picking its nearest candidates and
could miss the right story. One assigner works at a time per database (a transaction-scoped
advisory lock), so two app replicas never split one story in two. Embeddings and story ids
live in ``story_articles`` and ``stories`` (migration 005).

**Ranking** (:mod:`serving.stories.ranking`, computed at read time, so a late or re-done
summary counts at once)::

    rank = importance x min(1 + story_source_boost x (sources - 1), story_source_boost_cap)
                      x 0.5 ** (hours since its latest article / api_rank_half_life_h)

``importance`` is the highest importance (0-100, the engine's Result) among its summarized
articles; ``sources`` counts distinct source names (feed titles). Each story carries a
``why`` line ("importance 82 · 4 sources · 3 h ago", :mod:`serving.web.labels`) and the
factors behind it. The API models are :mod:`serving.stories.schemas`.
"""
