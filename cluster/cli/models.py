"""``newsdesk models ...``: the training registry (list runs, promote an adapter)."""

from __future__ import annotations

import json

import asyncpg
import typer
from rich.table import Table

from cluster.cli.common import console, err_console, run, settings
from core import db
from train import registry


def _fmt(value: object, digits: int = 3) -> str:
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return "-" if value is None else str(value)


async def _connect() -> asyncpg.Connection:
    conn = await asyncpg.connect(await db.resolve_database_url(settings()))
    await db.migrate(conn)
    return conn


def register(app: typer.Typer) -> None:
    group = typer.Typer(help="Fine-tuned adapters: the training runs and the promoted one.")
    app.add_typer(group, name="models")

    @group.command("list")
    def list_(
        profile: str | None = typer.Option(None, help="Only runs of this model profile."),
        limit: int = typer.Option(50, min=1),
        as_json: bool = typer.Option(False, "--json", help="One JSON object per run."),
    ) -> None:
        """Training runs, newest first, with their metrics; * marks the promoted one."""

        async def _go() -> list[registry.Run]:
            conn = await _connect()
            try:
                return await registry.list_runs(conn, profile, limit)
            finally:
                await conn.close()

        runs = run(_go())
        if as_json:
            for r in runs:
                typer.echo(
                    json.dumps(
                        {
                            "id": r.id,
                            "name": r.name,
                            "profile": r.profile,
                            "status": r.status,
                            "promoted": r.promoted,
                            "metrics": {k: v for k, v in r.metrics.items() if k != "history"},
                            "adapter_path": r.adapter_path,
                            "finished_at": r.finished_at,
                        },
                        default=str,
                    )
                )
            return
        table = Table(title="training runs")
        for column in (
            "",
            "id",
            "name",
            "profile",
            "status",
            "eval loss",
            "ROUGE-L base",
            "ROUGE-L adapter",
            "steps",
            "finished",
        ):
            table.add_column(column)
        for r in runs:
            m = r.metrics
            table.add_row(
                "*" if r.promoted else "",
                str(r.id),
                r.name,
                r.profile,
                r.status,
                _fmt(m.get("eval_loss")),
                _fmt(m.get("rougeL_base")),
                _fmt(m.get("rougeL_adapter")),
                _fmt(m.get("global_step")),
                r.finished_at.strftime("%Y-%m-%d %H:%M") if r.finished_at else "-",
            )
        console.print(table)

    @group.command("promote")
    def promote(
        run_id: int | None = typer.Argument(None, help="Run id (see `newsdesk models list`)."),
        base: bool = typer.Option(False, "--base", help="Serve the bare base model again."),
        profile: str | None = typer.Option(None, help="Profile (needed with --base)."),
        serve_url: str | None = typer.Option(
            None,
            help="Also push it to a running Serve app now (its dashboard/REST address, e.g. "
            "http://127.0.0.1:8265); otherwise replicas serve it when they next start or a "
            "deploy changes their user_config (a pinned `adapter` there wins).",
        ),
    ) -> None:
        """Make a finished run's adapter the one its profile serves."""
        if (run_id is None) == (not base):
            err_console.print("give a run id, or --base --profile NAME")
            raise typer.Exit(2)

        async def _go() -> registry.Promotion:
            conn = await _connect()
            try:
                return await registry.promote(conn, None if base else run_id, profile=profile)
            finally:
                await conn.close()

        try:
            promotion = run(_go())
        except registry.RegistryError as exc:
            err_console.print(f"[red]{exc}[/red]")
            raise typer.Exit(1) from exc
        what = promotion.adapter_id or "the base model"
        console.print(f"profile {promotion.profile} now serves {what} ({promotion.adapter_path})")
        if serve_url:
            changed = registry.push_to_serve(serve_url, promotion)
            console.print(
                f"pushed to the Serve app at {serve_url}: {', '.join(changed) or 'no change'}"
            )
