"""The summary service, plain asyncio (no product, no HTTP): a stored or cached Result, else a
model run, stored and counted.

- :mod:`.lookup`: the request path (LookupService), the version tracker and the near cache;
- :mod:`.cache`: the cache tiers (LRU+TTL in process, Redis when shared);
- :mod:`.result_store`: the Result store (PostgreSQL) and :mod:`.store_handle`, its lazy handle;
- :mod:`.loop`: the summarization loop over the stored backlog;
- :mod:`.promotions`: which adapter a profile serves (the registry's latest promotion);
- :mod:`.metrics`: Ray's metrics and the in-process summaries behind ``/v1/stats``.
"""
