"""Ingestion: the bottom layer. It owns the settings, the database and the Article contract,
and turns RSS/Atom feeds into clean, de-duplicated articles in PostgreSQL
(fetcher -> parser -> normalizer -> store, driven by the FeedPoller actor).

Polling, one concern a module: ``outcomes`` (what a poll reports), ``db_retry`` (waiting out
PostgreSQL), ``parse_pool`` (parsing, in worker processes or not), ``feed_poll`` (one feed),
``poller`` (the loop), ``actor`` (the Ray actor); ``subscriptions`` decides what may be
subscribed to; all SQL lives in ``store`` (and ``db`` for the pool and migrations)."""
