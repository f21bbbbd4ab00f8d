"""The shared contracts every layer builds on, and nothing else.

``core`` is the bottom of the import graph (``tests/test_import_graph.py`` checks it):

- :mod:`core.article` — the Article, the one model of a news article;
- :mod:`core.article_rows` — the one repository that reads stored articles;
- :mod:`core.db` — where PostgreSQL comes from, the pool, and the one migrations runner
  (each layer owns its part of the schema in ``<layer>/migrations``);
- :mod:`core.settings` — the settings base and the storage section every layer shares;
- :mod:`core.html_text` — HTML to plain text, for feeds and for posted articles alike.
"""
