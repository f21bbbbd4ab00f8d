"""``newsdesk db ...``: the database the stack uses."""

from __future__ import annotations

import typer

from cluster.cli.common import console, run, settings
from core import db


def register(app: typer.Typer) -> None:
    group = typer.Typer(help="The PostgreSQL database (embedded unless NEWSDESK_DATABASE_URL).")
    app.add_typer(group, name="db")

    @group.command("migrate")
    def migrate() -> None:
        """Apply pending schema migrations and print the database URL."""

        async def _go() -> None:
            s = settings()
            dsn = await db.resolve_database_url(s)
            pool = await db.create_pool(s, dsn=dsn)
            await pool.close()
            console.print(f"database ready: {dsn}")

        run(_go())
