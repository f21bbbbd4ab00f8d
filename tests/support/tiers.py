"""Test tiers as markers: every test is exactly one of ``unit``, ``local`` or ``system``.

- ``unit``: in-process and quick: no database, no model weights, no Ray (a loopback HTTP
  server the test starts itself is fine). ``make test-fast`` runs this tier.
- ``local``: real components on this machine: PostgreSQL, Redis, the small model, an
  in-process Ray.
- ``system``: the real stack as users run it (``ray start``, ``serve deploy``, HTTP).

``slow`` (over ~30 s here) is orthogonal. A test module may state its tier
(``pytestmark = pytest.mark.local``) or a test its own; a test that states none gets ``local``
when it asks for a fixture that starts a real component and ``unit`` otherwise. Either way the
tier is checked against the fixtures: a ``unit`` test that asks for PostgreSQL or the model
fails at collection, so the quick tier cannot quietly grow slow.
"""

from __future__ import annotations

import pytest

TIERS = ("unit", "local", "system")

# Fixtures that start (or need) a real component: asking for one makes a test at least local.
REAL_COMPONENT_FIXTURES = frozenset(
    {
        "pg_server_dsn",
        "database_url",
        "pool",
        "settings",
        "system_db",
        "own_postgres",
        "pgvector_server_dsn",
        "redis_server",
        "ray_session",
        "engine_settings",
        "prepared_model_dir",
        "model_dir",
        "tokenizer",
        "engine",
        "fp32_engine",
        "shipped_adapter_engine",
        "summarizer",
        "embedder",
        "lee",
        "lee_pairs",
        "lee_in_db",
        "api",
        "client",
        "deployed",
        "stack_url",
        "serve_url",
        "api_server",
    }
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    errors = []
    for item in items:
        stated = [m.name for m in item.iter_markers() if m.name in TIERS]
        real = REAL_COMPONENT_FIXTURES.intersection(getattr(item, "fixturenames", ()))
        if not stated:
            item.add_marker(pytest.mark.local if real else pytest.mark.unit)
            continue
        # the closest marker wins (a test's own over its module's)
        tier = stated[0]
        if tier == "unit" and real:
            errors.append(f"{item.nodeid}: marked unit but uses {', '.join(sorted(real))}")
    if errors:
        raise pytest.UsageError("test tiers:\n  " + "\n  ".join(errors))
