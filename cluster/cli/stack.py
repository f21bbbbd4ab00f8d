"""``newsdesk up`` (the local stack, until Ctrl-C) and ``newsdesk down`` (stop it from
another shell). ``up`` records its pid in ``STATE_DIR/stack.json``; ``down`` sends it SIGTERM,
which ``up`` handles as Ctrl-C: components stop in reverse order."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from types import FrameType

import typer
from rich.table import Table

from cluster.cli.common import console, err_console, settings
from cluster.settings import Settings


def pid_file(s: Settings) -> Path:
    return s.resolved_state_dir() / "stack.json"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # an exited process its parent has not reaped yet is not running
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _poller_line(poller: object, serve_url: str | None, s: Settings) -> str | None:
    """One line of poller status: from the FeedPoller actor, or from the Serve app's
    ``/v1/stats`` (its FeedIngestion deployment); None when neither runs."""
    if poller is not None:
        import ray

        st = ray.get(poller.status.remote(), timeout=10)  # type: ignore[attr-defined]
    elif serve_url:
        import httpx

        key = s.api_key.get_secret_value() if s.api_key else ""
        stats = httpx.get(f"{serve_url}/v1/stats", headers={"X-API-Key": key}, timeout=10)
        st = (stats.json().get("ingestion") or {}).get("poller")
        if not st:  # this replica is the standby, or ingestion is still connecting
            return None
    else:
        return None
    t = st["totals"]
    return (
        f"poller: {st['polls']} polls, {t['feeds_ok']} ok, "
        f"{t['feeds_not_modified']} not modified, {t['feeds_failed']} failed; "
        f"{t['articles_new']} new articles; database {st['database']}"
    )


def register(app: typer.Typer) -> None:
    @app.command("up")
    def up(
        status_every: float = typer.Option(
            60.0, "--status-every", help="Seconds between one-line poller status reports (0: off)."
        ),
        dashboard: bool = typer.Option(
            True, "--dashboard/--no-dashboard", help="Start the Ray dashboard (metrics)."
        ),
        only: list[str] = typer.Option(
            [],
            "--only",
            help="Start only these components (repeatable), e.g. --only ray --only database "
            "--only feeds --only poller for ingestion alone (the FeedPoller actor).",
        ),
    ) -> None:
        """Start the local stack (Ray, PostgreSQL, feeds, the Serve app with the summarization
        loop, stories and feed ingestion) until Ctrl-C."""
        import logging

        from cluster.components import Stack
        from cluster.stack import default_components, optional_components

        logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
        s = settings()
        path = pid_file(s)
        if path.exists():
            try:
                other = json.loads(path.read_text())["pid"]
            except (ValueError, KeyError, OSError):
                other = None
            if other and other != os.getpid() and _alive(int(other)):
                err_console.print(f"[red]error:[/red] a stack already runs (pid {other})")
                raise typer.Exit(1)
        components = default_components(s, dashboard=dashboard)
        if only:
            known = components + optional_components()
            unknown = set(only) - {c.name for c in known}
            if unknown:
                names = ", ".join(c.name for c in known)
                err_console.print(f"[red]error:[/red] unknown component(s) {unknown}: {names}")
                raise typer.Exit(2)
            if {"poller", "serve"} <= set(only):
                err_console.print("[red]error:[/red] serve ingests feeds already: not with poller")
                raise typer.Exit(2)
            components = [c for c in known if c.name in only]
        stack = Stack(s, components)
        from serving.deployments.builder import fast_path_env

        # before ray.init: Serve's HAProxy fast path, with files and ports of its own
        for name, value in fast_path_env().items():
            os.environ.setdefault(name, value)
        # SIGTERM (`newsdesk down`, `kill`) stops as cleanly as Ctrl-C, and so does SIGINT
        # even when a shell started us in the background with SIGINT ignored. Set again
        # after start: ray.init installs handlers of its own. The pid file is written
        # first, so `newsdesk down` also stops a stack that is still starting.
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, _interrupt)
        path.write_text(json.dumps({"pid": os.getpid(), "started_at": time.time()}))
        try:
            with console.status("starting the stack..."):
                stack.start()
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, _interrupt)
            table = Table(title="newsdesk stack running (Ctrl-C or `newsdesk down` to stop)")
            table.add_column("component")
            table.add_column("what runs", overflow="fold")
            for name, text in stack.describe():
                table.add_row(name, text)
            console.print(table)
            poller = stack.ctx.values.get("poller")  # --only poller
            serve_url = stack.ctx.values.get("serve_url")  # else the app's FeedIngestion
            next_report = time.monotonic() + status_every
            while True:
                time.sleep(1.0)
                if status_every > 0 and time.monotonic() >= next_report:
                    next_report = time.monotonic() + status_every
                    try:
                        line = _poller_line(poller, serve_url, s)
                    except Exception as exc:
                        line = f"poller status unavailable: {type(exc).__name__}: {exc}"
                    if line:
                        console.print(line)
        except KeyboardInterrupt:
            console.print("stopping...")
        finally:
            stack.stop()
            try:
                if json.loads(path.read_text()).get("pid") == os.getpid():
                    path.unlink()
            except (OSError, ValueError):
                pass
        console.print("stopped")

    @app.command("down")
    def down(
        timeout: float = typer.Option(90.0, help="Seconds to wait for the stack to stop."),
    ) -> None:
        """Stop the stack started by `newsdesk up` (same state dir)."""
        s = settings()
        path = pid_file(s)
        try:
            pid = int(json.loads(path.read_text())["pid"])
        except (OSError, ValueError, KeyError):
            console.print("no stack running")
            return
        if not _alive(pid):
            path.unlink(missing_ok=True)
            console.print(f"no stack running (stale pid {pid} removed)")
            return
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _alive(pid):
            err_console.print(f"[red]error:[/red] the stack (pid {pid}) did not stop in {timeout}s")
            raise typer.Exit(1)
        console.print(f"stack stopped (pid {pid})")
