"""``newsdesk ingest`` (polling, in-process); subscriptions are ``newsdesk feeds ...``
(:mod:`cluster.cli.feeds`).

newsdesk ingest --once                        # poll every due feed once, then a table
newsdesk ingest                               # poll until Ctrl-C
"""

from __future__ import annotations

import logging

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cluster.cli.common import console, run, settings
from cluster.settings import Settings
from ingestion import store


def register(app: typer.Typer) -> None:
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
    from ingestion.poll_loop import Poller

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
    from ingestion.poll_loop import Poller

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
