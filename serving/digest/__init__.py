"""The ranked digest as feeds: RSS 2.0, Atom 1.0 and JSON Feed 1.1 (``/feeds/digest.*``).

- :mod:`.formats`: the documents, one item per story;
- :mod:`.schemas`: the feeds' query and the JSON Feed models;
- :mod:`.store`: the feeds' SQL (the ETag's fingerprint, when each story last changed).
"""
