"""``newsdesk feeds ...``: subscriptions, on this machine's database or, with ``--api URL``
(or ``NEWSDESK_API_URL``), on a deployed system's HTTP API with its key (``--api-key`` or
``NEWSDESK_API_KEY``). Each command is written once against ``FeedAdmin``
(:mod:`cluster.cli.feeds_client`) and prints the same either way.

newsdesk feeds add https://feeds.bbci.co.uk/news/rss.xml --interval 600 --category World
newsdesk feeds list --status quarantined
newsdesk feeds import subscriptions.opml      # or a feeds.yaml
newsdesk feeds export -o subscriptions.opml   # OPML 2.0 (stdout without -o)
newsdesk feeds remove 3                       # by id or URL
newsdesk feeds enable 3                       # re-activate a quarantined/disabled feed
newsdesk feeds disable 3
newsdesk feeds list --api https://newsdesk.example.org --api-key "$KEY"
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from rich.markup import escape
from rich.table import Table

from cluster.cli.common import console, fail, run, settings
from cluster.cli.feeds_client import DbFeedAdmin, FeedAdmin, FeedAdminError, HttpFeedAdmin
from ingestion.feed_admin import FeedInfo
from ingestion.feedlist import FeedListError
from ingestion.opml import read_opml
from ingestion.schedule import ACTIVE, DISABLED
from ingestion.subscriptions import InvalidFeedURL

T = TypeVar("T")
_STATUS_STYLE = {"active": "green", "quarantined": "yellow", "disabled": "red"}
STATES = tuple(_STATUS_STYLE)

Api = Annotated[
    str | None,
    typer.Option(
        "--api",
        help="Administer the feeds of this Newsdesk API (http://host:8000) instead of the "
        "database. Default: NEWSDESK_API_URL.",
        show_default=False,
    ),
]
ApiKey = Annotated[
    str | None,
    typer.Option(
        "--api-key",
        help="The API's key (X-API-Key). Default: NEWSDESK_API_KEY.",
        show_default=False,
    ),
]
Ref = Annotated[str, typer.Argument(help="Feed id or URL.")]


def _ago(when: datetime | None, now: datetime) -> str:
    if when is None:
        return "-"
    seconds = (now - when).total_seconds()
    future = seconds < 0
    seconds = abs(seconds)
    if seconds < 90:
        text = f"{seconds:.0f}s"
    elif seconds < 5400:
        text = f"{seconds / 60:.0f}m"
    elif seconds < 172800:
        text = f"{seconds / 3600:.1f}h"
    else:
        text = f"{seconds / 86400:.0f}d"
    return f"in {text}" if future else f"{text} ago"


def _with_admin(
    api: str | None, api_key: str | None, work: Callable[[FeedAdmin], Awaitable[T]]
) -> T:
    """Run ``work`` on the database, or on the API when one is named; the API's errors (and
    an API that cannot be reached) end the command with their message."""
    s = settings()
    url = api or s.api_url

    async def go() -> T:
        admin: FeedAdmin
        if url:
            key = api_key or (s.api_key.get_secret_value() if s.api_key else None)
            admin = HttpFeedAdmin(url, key)
        else:
            admin = DbFeedAdmin(s)
        try:
            return await work(admin)
        finally:
            await admin.aclose()

    try:
        return run(go())
    except FeedAdminError as exc:
        raise fail(str(exc)) from None


def _feed_table(rows: list[FeedInfo]) -> Table:
    now = datetime.now(UTC)
    table = Table(title=f"{len(rows)} feeds", show_lines=False)
    for name in ("id", "feed", "status", "every", "fetched", "outcome", "articles", "next"):
        table.add_column(name, overflow="fold")
    table.add_column("last error", overflow="fold", max_width=60)
    for f in rows:
        style = _STATUS_STYLE.get(f.status, "")
        outcome = f.last_outcome or "-"
        if f.last_http_status:
            outcome += f" ({f.last_http_status})"
        failures = f" x{f.consecutive_failures}" if f.consecutive_failures else ""
        name = (f.title + "\n" if f.title else "") + f.url
        if f.category:
            name = f"[{f.category}] {name}"
        table.add_row(
            str(f.id),
            escape(name),
            f"[{style}]{f.status}[/{style}]{failures}",
            f"{f.interval_s}s",
            _ago(f.last_fetched_at, now),
            outcome,
            str(f.articles_total),
            _ago(f.next_poll_at, now) if f.next_poll_at else "-",
            escape(f.last_error or ""),
        )
    return table


def register(app: typer.Typer) -> None:
    feeds = typer.Typer(
        help="Feed subscriptions: add, list, import/export (OPML), remove, enable, disable; "
        "on the database, or on a deployed API with --api URL."
    )
    app.add_typer(feeds, name="feeds")

    @feeds.command("add")
    def feeds_add(
        url: str = typer.Argument(..., help="Feed URL (http, https or file)."),
        interval: int | None = typer.Option(
            None, "--interval", min=10, help="Seconds between polls (default: settings)."
        ),
        title: str | None = typer.Option(None, "--title", help="Name shown for the feed."),
        category: str | None = typer.Option(
            None, "--category", help='Its folder ("World", "World/Europe"; kept in exports).'
        ),
        api: Api = None,
        api_key: ApiKey = None,
    ) -> None:
        """Subscribe to a feed (polled from the next poll)."""
        try:
            feed, created = _with_admin(
                api,
                api_key,
                lambda a: a.add(url, title=title, category=category, interval_s=interval),
            )
        except InvalidFeedURL as exc:
            raise fail(f"cannot add {url}: {exc}", 2) from None
        if created:
            console.print(f"added feed #{feed.id} {escape(feed.url)} (every {feed.interval_s}s)")
        else:
            console.print(f"already subscribed: feed #{feed.id} {escape(feed.url)} ({feed.status})")

    @feeds.command("list")
    def feeds_list(
        status: str | None = typer.Option(
            None, "--status", help="Only feeds in this state: active, quarantined, disabled."
        ),
        api: Api = None,
        api_key: ApiKey = None,
    ) -> None:
        """Feeds with their state, last outcome and last error."""
        if status is not None and status not in STATES:
            raise fail(f"no status {status!r}: one of {', '.join(STATES)}", 2)
        rows = _with_admin(api, api_key, lambda a: a.list_feeds(status))
        if not rows:
            console.print("no feeds" + (f" with status {status}" if status else ""))
            return
        console.print(_feed_table(rows))

    @feeds.command("import")
    def feeds_import(
        file: Path = typer.Argument(..., exists=True, dir_okay=False, help="OPML or YAML file."),
        api: Api = None,
        api_key: ApiKey = None,
    ) -> None:
        """Subscribe to every feed of an OPML export (or a feeds YAML like configs/feeds.yaml);
        a feed that cannot be added is named with the reason, the others are added."""
        fmt = "yaml" if file.suffix.lower() in (".yaml", ".yml") else "opml"
        data = file.read_bytes()
        try:
            report = _with_admin(api, api_key, lambda a: a.import_list(data, fmt))
        except FeedListError as exc:
            raise fail(str(exc), 2) from None
        console.print(
            f"{report.total} feeds in {escape(file.name)}: {len(report.added)} added, "
            f"{len(report.existing)} already subscribed, {len(report.refused)} refused"
        )
        for refused in report.refused:
            console.print(
                f"  [yellow]refused[/yellow] {escape(refused.url)}: {escape(refused.reason)}"
            )

    @feeds.command("export")
    def feeds_export(
        output: Path | None = typer.Option(
            None, "--output", "-o", dir_okay=False, help="Write here instead of stdout."
        ),
        api: Api = None,
        api_key: ApiKey = None,
    ) -> None:
        """Every feed as OPML 2.0 (categories as folders), for a feed reader or `feeds import`."""
        document = _with_admin(api, api_key, lambda a: a.export_opml())
        if output is None:
            typer.echo(document.decode("utf-8"), nl=False)
            return
        output.write_bytes(document)
        count = len(read_opml(document)[0])
        console.print(f"exported {count} feeds to {escape(str(output))}")

    @feeds.command("remove")
    def feeds_remove(ref: Ref, api: Api = None, api_key: ApiKey = None) -> None:
        """Unsubscribe: delete the feed and its articles."""
        feed = _with_admin(api, api_key, lambda a: a.remove(ref))
        if feed is None:
            raise fail(f"no feed {ref}")
        console.print(
            f"removed feed #{feed.id} {escape(feed.url)} ({feed.articles_total} articles)"
        )

    def _set_status(ref: str, status: str, api: str | None, api_key: str | None) -> None:
        feed = _with_admin(api, api_key, lambda a: a.set_status(ref, status))
        if feed is None:
            raise fail(f"no feed {ref}")
        console.print(f"feed #{feed.id} {escape(feed.url)} is {feed.status}")

    @feeds.command("enable")
    def feeds_enable(ref: Ref, api: Api = None, api_key: ApiKey = None) -> None:
        """Re-activate a quarantined or disabled feed (failures reset, due now)."""
        _set_status(ref, ACTIVE, api, api_key)

    @feeds.command("disable")
    def feeds_disable(ref: Ref, api: Api = None, api_key: ApiKey = None) -> None:
        """Stop polling a feed (its articles stay)."""
        _set_status(ref, DISABLED, api, api_key)
