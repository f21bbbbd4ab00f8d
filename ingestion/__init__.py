"""Ingestion: the bottom layer. It owns the settings, the database and the Article contract,
and turns RSS/Atom feeds into clean, de-duplicated articles in PostgreSQL
(fetcher -> parser -> normalizer -> store, driven by the FeedPoller actor)."""
