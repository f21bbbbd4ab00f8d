"""``newsdesk webhooks ...``: webhook alerts, on the database directly (as ``newsdesk feeds``),
through the same functions as ``/v1/webhooks``.

newsdesk webhooks add https://hooks.example.com/newsdesk --min-importance 70 --topic politics
newsdesk webhooks list
newsdesk webhooks deliveries 3               # the delivery log, newest first
newsdesk webhooks remove 3
"""

from __future__ import annotations

from datetime import UTC, datetime

import typer
from rich.table import Table

from cluster.cli.common import console, fail, run, settings
from core import db
from serving.webhooks import store
from serving.webhooks.schemas import Delivery, Webhook, WebhookCreate, WebhookCreated
from serving.webhooks.subscriptions import (
    InvalidWebhookURL,
    SubscribePolicy,
    check_webhook_url,
    subscribe,
)


def _when(at: datetime | None) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if at else "-"


def register(app: typer.Typer) -> None:
    hooks = typer.Typer(help="Webhook alerts: add, list, remove, deliveries.")
    app.add_typer(hooks, name="webhooks")

    @hooks.command("add")
    def hooks_add(
        url: str = typer.Argument(..., help="http(s) URL the events are POSTed to."),
        min_importance: float | None = typer.Option(
            None, "--min-importance", min=0, max=100, help="Only stories at least this important."
        ),
        topic: list[str] = typer.Option([], "--topic", help="A topic (repeat: any of them)."),
        source: list[str] = typer.Option([], "--source", help="A source (repeat: any of them)."),
        growth_step: int | None = typer.Option(
            None, "--growth-step", min=1, help="story.grew per this many more (default: setting)."
        ),
        growth_metric: str = typer.Option(
            "articles", "--growth-metric", help="What story.grew counts: articles or sources."
        ),
        secret: str | None = typer.Option(
            None, "--secret", help="Signing secret (16+ chars); default: a new one, shown once."
        ),
        description: str = typer.Option("", "--description", help="A note for people."),
    ) -> None:
        """Subscribe a URL to story alerts; prints the signing secret once."""
        s = settings()
        try:
            request = WebhookCreate(
                url=url,
                secret=secret,
                description=description,
                min_importance=min_importance,
                topics=topic,
                sources=source,
                growth_metric=growth_metric,  # type: ignore[arg-type]
                growth_step=growth_step,
            )
        except ValueError as exc:
            raise fail(f"cannot add {url}: {exc}", 2) from None
        policy = SubscribePolicy.from_settings(s)
        try:  # before connecting: a refused URL is refused at once
            check_webhook_url(
                url, allow_private=policy.allow_private, allow_loopback=policy.allow_loopback
            )
        except InvalidWebhookURL as exc:
            raise fail(f"cannot add {url}: {exc}", 2) from None

        async def go() -> WebhookCreated:
            pool = await db.create_pool(s)
            try:
                return await subscribe(pool, request, policy)
            finally:
                await pool.close()

        hook = run(go())
        console.print(f"added webhook #{hook.id} {hook.url} ({_filter(hook)})")
        console.print(f"secret (shown once): {hook.secret}")

    @hooks.command("list")
    def hooks_list() -> None:
        """Webhooks with their filters and event counts (never their secrets)."""
        rows = run(_with_pool(store.list_webhooks))
        if not rows:
            console.print("no webhooks")
            return
        table = Table(title=f"{len(rows)} webhooks")
        for col in ("id", "url", "filter", "growth", "pending", "delivered", "given up"):
            table.add_column(col, justify="right" if col == "id" else "left")
        for h in rows:
            table.add_row(
                str(h.id),
                h.url,
                _filter(h),
                f"+{h.growth_step} {h.growth_metric}",
                str(h.pending),
                str(h.delivered),
                str(h.given_up),
            )
        console.print(table)

    @hooks.command("remove")
    def hooks_remove(webhook_id: int = typer.Argument(..., help="Webhook id.")) -> None:
        """Unsubscribe: delete the webhook, its pending events and its log."""
        if not run(_with_pool(store.delete_webhook, webhook_id)):
            raise fail(f"no webhook {webhook_id}")
        console.print(f"removed webhook #{webhook_id}")

    @hooks.command("deliveries")
    def hooks_deliveries(
        webhook_id: int = typer.Argument(..., help="Webhook id."),
        limit: int = typer.Option(20, "--limit", min=1, help="Most events shown."),
    ) -> None:
        """The delivery log: each event with its state and attempts, newest first."""

        async def read(pool) -> tuple[Webhook | None, list[Delivery]]:  # type: ignore[no-untyped-def]
            hook = await store.get_webhook(pool, webhook_id)
            rows = await store.list_deliveries(pool, webhook_id, limit=limit) if hook else []
            return hook, rows

        hook, rows = run(_with_pool(read))
        if hook is None:
            raise fail(f"no webhook {webhook_id}")
        table = Table(title=f"webhook #{hook.id} {hook.url}: {len(rows)} events")
        for col in ("event", "kind", "story", "state", "attempts", "last", "created", "done"):
            table.add_column(col)
        for d in rows:
            last = str(d.last_status_code or "") + (f" {d.last_error}" if d.last_error else "")
            done = d.delivered_at or d.given_up_at
            table.add_row(
                d.event_id,
                d.kind,
                str(d.story_id),
                d.state,
                str(d.attempts),
                last.strip() or "-",
                _when(d.created_at),
                _when(done) if done else f"next {_when(d.next_attempt_at)}",
            )
        console.print(table)


async def _with_pool(fn, *args):  # type: ignore[no-untyped-def]
    pool = await db.create_pool(settings())
    try:
        return await fn(pool, *args)
    finally:
        await pool.close()


def _filter(h: Webhook) -> str:
    parts = []
    if h.min_importance is not None:
        parts.append(f"importance >= {h.min_importance:g}")
    if h.topics:
        parts.append("topic " + "|".join(h.topics))
    if h.sources:
        parts.append("source " + "|".join(h.sources))
    return ", ".join(parts) or "every story"
