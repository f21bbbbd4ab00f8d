"""``newsdesk feeds ...`` (subscriptions) and ``newsdesk ingest`` (polling, in-process).

newsdesk feeds add https://feeds.bbci.co.uk/news/rss.xml --interval 600
newsdesk feeds list
newsdesk feeds import subscriptions.opml      # or a feeds.yaml
newsdesk feeds remove 3                       # by id or URL
newsdesk feeds enable 3                       # re-activate a quarantined/disabled feed
newsdesk ingest --once                        # poll every due feed once, then a table
newsdesk ingest                               # poll until Ctrl-C
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cluster.cli.common import console, fail, run, settings
from cluster.settings import Settings
from core import db
from ingestion import store
from ingestion.feedlist import FeedListError, add_feeds, load_feeds_yaml
from ingestion.schedule import ACTIVE, DISABLED
from ingestion.subscriptions import InvalidFeedURL, check_feed_url, subscribe

_STATUS_STYLE = {"active": "green", "quarantined": "yellow", "disabled": "red"}


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


async def _pool(s: Settings):  # type: ignore[no-untyped-def]
    return await db.create_pool(s)


def register(app: typer.Typer) -> None:
    feeds = typer.Typer(help="Feed subscriptions: add, list, import (OPML/YAML), remove.")
    app.add_typer(feeds, name="feeds")

    @feeds.command("add")
    def feeds_add(
        url: str = typer.Argument(..., help="Feed URL (http, https or file)."),
        interval: int | None = typer.Option(
            None, "--interval", min=10, help="Seconds between polls (default: settings)."
        ),
        title: str | None = typer.Option(None, "--title", help="Name shown for the feed."),
    ) -> None:
        """Subscribe to a feed (polled from the next `newsdesk ingest`)."""
        s = settings()
        try:
            check_feed_url(url, s)  # before connecting: a bad URL is refused at once
        except InvalidFeedURL as exc:
            raise fail(f"cannot add {url}: {exc}", 2) from None

        async def go() -> tuple[store.Feed, bool]:
            pool = await _pool(s)
            try:
                return await subscribe(pool, url, s, title=title, interval_s=interval)
            finally:
                await pool.close()

        feed, created = run(go())
        if created:
            console.print(f"added feed #{feed.id} {feed.url} (every {feed.interval_s}s)")
        else:
            console.print(f"already subscribed: feed #{feed.id} {feed.url} ({feed.status})")

    @feeds.command("list")
    def feeds_list(
        status: str | None = typer.Option(
            None, "--status", help="Only feeds in this state: active, quarantined, disabled."
        ),
    ) -> None:
        """Feeds with their state, last outcome and last error."""
        s = settings()

        async def go() -> list[store.Feed]:
            pool = await _pool(s)
            try:
                return await store.list_feeds(pool)
            finally:
                await pool.close()

        rows = [f for f in run(go()) if status is None or f.status == status]
        if not rows:
            console.print("no feeds" + (f" with status {status}" if status else ""))
            return
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
            table.add_row(
                str(f.id),
                (f.title + "\n" if f.title else "") + f.url,
                f"[{style}]{f.status}[/{style}]{failures}",
                f"{f.interval_s}s",
                _ago(f.last_fetched_at, now),
                outcome,
                str(f.articles_total),
                "-" if f.status == DISABLED else _ago(f.next_due_at, now),
                f.last_error or "",
            )
        console.print(table)

    @feeds.command("import")
    def feeds_import(
        file: Path = typer.Argument(..., exists=True, dir_okay=False, help="OPML or YAML file."),
    ) -> None:
        """Subscribe to every feed of an OPML export (or a feeds YAML like configs/feeds.yaml)."""
        from ingestion.opml import load_opml

        s = settings()
        try:
            if file.suffix.lower() in (".yaml", ".yml"):
                specs = load_feeds_yaml(file)
            else:
                specs = load_opml(file)
        except FeedListError as exc:
            raise fail(str(exc), 2) from None

        async def go():  # type: ignore[no-untyped-def]
            pool = await _pool(s)
            try:
                return await add_feeds(pool, specs, s)
            finally:
                await pool.close()

        report = run(go())
        console.print(
            f"{len(specs)} feeds in {file.name}: {len(report.added)} added, "
            f"{len(report.existing)} already subscribed, {len(report.refused)} refused"
        )
        for url, reason in report.refused:
            console.print(f"  [yellow]refused[/yellow] {url}: {reason}")

    @feeds.command("remove")
    def feeds_remove(ref: str = typer.Argument(..., help="Feed id or URL.")) -> None:
        """Unsubscribe: delete the feed and its articles."""
        s = settings()

        async def go() -> store.Feed | None:
            pool = await _pool(s)
            try:
                return await store.remove_feed(pool, ref)
            finally:
                await pool.close()

        feed = run(go())
        if feed is None:
            raise fail(f"no feed {ref}")
        console.print(f"removed feed #{feed.id} {feed.url} ({feed.articles_total} articles)")

    def _set_status(ref: str, status: str) -> None:
        s = settings()

        async def go() -> store.Feed | None:
            pool = await _pool(s)
            try:
                return await store.set_feed_status(pool, ref, status)
            finally:
                await pool.close()

        feed = run(go())
        if feed is None:
            raise fail(f"no feed {ref}")
        console.print(f"feed #{feed.id} {feed.url} is {feed.status}")

    @feeds.command("enable")
    def feeds_enable(ref: str = typer.Argument(..., help="Feed id or URL.")) -> None:
        """Re-activate a quarantined or disabled feed (failures reset, due now)."""
        _set_status(ref, ACTIVE)

    @feeds.command("disable")
    def feeds_disable(ref: str = typer.Argument(..., help="Feed id or URL.")) -> None:
        """Stop polling a feed (its articles stay)."""
        _set_status(ref, DISABLED)

    @app.command("ingest")
    def ingest(
        once: bool = typer.Option(
            False, "--once", help="Poll every due feed once, print a summary, and exit."
        ),
        all_feeds: bool = typer.Option(
            False, "--all", help="With --once: make every feed due first (ignore schedules)."
        ),
    ) -> None:
        """Poll feeds into PostgreSQL, in this process (no Ray needed); `--once` or until Ctrl-C."""
        s = settings()
        if once:
            run(_ingest_once(s, all_feeds))
        else:
            logging.getLogger("ingestion").setLevel(logging.INFO)
            try:
                run(_ingest_forever(s))
            except KeyboardInterrupt:
                pass


async def _ingest_once(s: Settings, all_feeds: bool) -> None:
    from ingestion.poller import Poller

    poller = Poller(s)
    await poller.start()
    try:
        if all_feeds:
            await store.make_due(poller.pool)
        due = await store.count_due(poller.pool)
        with Progress(
            TextColumn("[bold]polling feeds"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[last]}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        ) as progress:
            task = progress.add_task("poll", total=due, last="")

            def on_feed(report) -> None:  # type: ignore[no-untyped-def]
                progress.update(task, advance=1, last=f"{report.outcome}: {report.url[:50]}")

            summary = await poller.poll_once(on_feed=on_feed)
    finally:
        await poller.close()
    table = Table(title=f"ingest --once: {summary.polled} feeds in {summary.elapsed_s:.1f}s")
    table.add_column("feeds ok", justify="right")
    table.add_column("not modified", justify="right")
    table.add_column("failed", justify="right")
    table.add_column("articles new", justify="right")
    table.add_column("duplicate", justify="right")
    table.add_column("rejected", justify="right")
    table.add_row(
        str(summary.feeds_ok),
        str(summary.feeds_not_modified),
        str(summary.feeds_failed),
        str(summary.new),
        str(summary.duplicate),
        str(summary.rejected),
    )
    console.print(table)
    if summary.copies:
        console.print(f"{summary.copies} new articles repeat a stored text (duplicate_of set)")
    for reason, n in summary.rejected_reasons.most_common():
        console.print(f"rejected x{n}: {reason}")
    failed = [r for r in summary.reports if r.outcome not in ("ok", "not_modified")]
    for r in failed[:20]:
        console.print(f"[yellow]{r.outcome}[/yellow] #{r.feed_id} {r.url}: {r.reason}")
    if len(failed) > 20:
        console.print(f"... and {len(failed) - 20} more failed feeds (`newsdesk feeds list`)")


async def _ingest_forever(s: Settings) -> None:
    from ingestion.poller import Poller

    poller = Poller(s)
    await poller.start()
    console.print("polling feeds until Ctrl-C (logs on stderr)")
    try:
        await poller.run_forever()
    finally:
        await poller.close()
        totals = poller.totals
        console.print(
            f"stopped after {poller.polls} polls: {totals.polled} feed fetches, "
            f"{totals.new} new articles, {totals.feeds_failed} failed fetches"
        )
