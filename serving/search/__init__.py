"""Search: ``GET /v1/search?q=`` over the stored history, articles and their summaries, with
PostgreSQL full-text search (docs/search.md).

**Index** (migration 007): a generated ``tsvector`` per article (title weighted A, text B) and
per Result (summary, B), each under a GIN index, both through one text search configuration,
``newsdesk_search`` (English stemming after unaccent). A query is read by
``websearch_to_tsquery``: quotes for a phrase, ``OR``, ``-word`` to exclude. An article is a
hit when the query matches its words or the words of its latest summary; articles still
without a summary are hits by their own words. Copies of an article from another feed
(``duplicate_of``) are left out, as in ``/v1/articles``.

**Ranking** (computed at read time)::

    score = relevance x recency_factor x importance_factor
    relevance         = rank / (rank + 1)
    rank              = ts_rank_cd(article words, query) + ts_rank_cd(summary words, query)
    recency_factor    = 0.5 + 0.5 x 0.5 ** (hours since published / api_rank_half_life_h)
    importance_factor = 0.5 + 0.5 x importance / 100      (importance 50 without a summary)

Relevance leads; recency and importance each move a hit by at most a factor of two, so an
exact match from last month still beats a passing mention from this morning, while between
equally relevant hits the newer and the more important come first. The SQL is
:mod:`serving.search.store`, the API models :mod:`serving.search.schemas`.
"""
