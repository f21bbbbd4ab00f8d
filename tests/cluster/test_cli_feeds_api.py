"""``newsdesk feeds ... --api URL``: the CLI (typer's CliRunner) against a real HTTP server
running the API app over real PostgreSQL, with no database reachable from the CLI's side.
The same commands run on the database print the same thing; what they did is checked in the
database and in what the poller would poll next."""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from typer.testing import CliRunner

from cluster.cli import app
from cluster.settings import Settings
from ingestion import store
from serving.deployments.local import LocalBackend, local_app
from tests.support.serve import app_server

KEY = "cli-feeds-key"
PORTS = range(8640, 8650)  # this suite's ports
NO_DATABASE = "postgresql://nobody@127.0.0.1:1/none"  # the laptop reaches no database

runner = CliRunner()

SUBSCRIPTIONS = b"""<?xml version="1.0" encoding="UTF-8"?>
<opml version="2.0">
  <body>
    <outline text="World">
      <outline type="rss" text="A again" xmlUrl="https://a.example/rss"/>
      <outline type="rss" text="B" xmlUrl="https://b.example/atom"/>
      <outline type="rss" text="FTP" xmlUrl="ftp://files.example/feed"/>
    </outline>
    <outline type="rss" text="Intranet" xmlUrl="http://10.1.2.3/feed"/>
    <outline type="rss" text="C" xmlUrl="https://c.example/feed"/>
  </body>
</opml>"""


def _port(taken: set[int] = frozenset()) -> int:  # type: ignore[assignment]
    for port in PORTS:
        if port in taken:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError(f"no free port in {PORTS}")


def _no_model() -> None:
    raise AssertionError("feed administration must never load the model")


@pytest.fixture
def api_server(settings: Settings) -> Iterator[str]:
    """The API app (with a key) on a real HTTP server, over the test's database."""
    s = settings.model_copy(update={"api_key": KEY})
    backend = LocalBackend(s, _no_model)  # type: ignore[arg-type]
    with app_server(local_app(backend, s), _port()) as url:
        yield url


def _env(database_url: str, state_dir: Path, **extra: str) -> dict[str, str]:
    return {
        "NEWSDESK_DATABASE_URL": database_url,
        "NEWSDESK_STATE_DIR": str(state_dir),
        "NEWSDESK_API_URL": "",
        "NEWSDESK_API_KEY": "",
        "COLUMNS": "250",  # wide tables: one row per line
        **extra,
    }


async def cli(env: dict[str, str], *args: str, code: int = 0) -> str:
    result = await asyncio.to_thread(runner.invoke, app, list(args), env=env)
    assert result.exit_code == code, (args, result.output, result.exception)
    return result.output


async def _due_ids(pool: asyncpg.Pool) -> list[int]:
    """The feeds the poller would take now (ingestion's own claim query)."""
    _, feeds = await store.claim_due_feeds(pool, limit=100, lease_s=60)
    await pool.execute("UPDATE feeds SET next_due_at = now(), lease_token = NULL")
    return sorted(f.id for f in feeds)


def _steps(tmp_path: Path) -> list[tuple[list[str], int]]:
    """A session of feed administration: (arguments, exit code)."""
    opml = tmp_path / "subscriptions.opml"
    opml.write_bytes(SUBSCRIPTIONS)
    out = tmp_path / "export.opml"
    return [
        (["add", "https://a.example/rss", "--title", "A", "--category", "World"], 0),
        (["add", "https://a.example/rss", "--interval", "600"], 0),
        (["add", "http://10.0.0.1/feed"], 2),
        (["add", "gopher://a.example/"], 2),
        (["import", str(opml)], 0),
        (["disable", "2"], 0),
        (["list", "--status", "disabled"], 0),
        (["disable", "https://c.example/feed"], 0),
        (["enable", "3"], 0),
        (["disable", "999"], 1),
        (["remove", "https://nope.example/"], 1),
        (["list"], 0),
        (["export"], 0),
        (["export", "-o", str(out)], 0),
        (["remove", "1"], 0),
        (["list", "--status", "quarantined"], 0),
    ]


def _normalized(output: str) -> str:
    """Without what differs from one second to the next (ages, the export's date, and so the
    widths of the table's columns)."""
    output = re.sub(r"<dateCreated>[^<]*</dateCreated>", "<dateCreated/>", output)
    output = re.sub(r"\b(in )?\d+(\.\d)?[smhd]( ago)?", "T", output)
    return re.sub(r"[ ─━]+", " ", output)


async def test_feed_commands_over_the_api_do_what_they_do_on_the_database(
    api_server: str, database_url: str, state_dir: Path, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    remote = _env(NO_DATABASE, state_dir)
    over_api = []
    for args, code in _steps(tmp_path):
        out = await cli(remote, "feeds", *args, "--api", api_server, "--api-key", KEY, code=code)
        over_api.append(out)

    assert "added feed #1 https://a.example/rss (every 900s)" in over_api[0]
    assert "already subscribed: feed #1 https://a.example/rss (active)" in over_api[1]
    assert "refused 10.0.0.1: a private address" in over_api[2]
    assert "unsupported URL scheme 'gopher'" in over_api[3]
    assert "5 feeds in subscriptions.opml: 2 added, 1 already subscribed, 2 refused" in over_api[4]
    assert "refused ftp://files.example/feed: unsupported URL scheme 'ftp'" in over_api[4]
    assert "refused http://10.1.2.3/feed: refused 10.1.2.3: a private address" in over_api[4]
    assert "feed #2 https://b.example/atom is disabled" in over_api[5]
    assert "1 feeds" in over_api[6] and "https://b.example/atom" in over_api[6]
    assert "feed #3 https://c.example/feed is active" in over_api[8]
    assert "no feed 999" in over_api[9] and "no feed https://nope.example/" in over_api[10]
    assert "3 feeds" in over_api[11] and "[World] A" in over_api[11]
    assert (
        '<outline type="rss" text="B" title="B" xmlUrl="https://b.example/atom" />'
        in (over_api[12])
    )
    assert "exported 3 feeds to" in over_api[13]
    assert "removed feed #1 https://a.example/rss (0 articles)" in over_api[14]
    assert "no feeds with status quarantined" in over_api[15]

    rows = await pool.fetch("SELECT id, url, status, category FROM feeds ORDER BY id")
    assert [tuple(r) for r in rows] == [
        (2, "https://b.example/atom", "disabled", "World"),
        (3, "https://c.example/feed", "active", None),
    ]
    assert await _due_ids(pool) == [3]  # the disabled feed is not polled
    exported = (tmp_path / "export.opml").read_bytes()
    assert exported.count(b"xmlUrl=") == 3

    # the same session on the database (no --api) prints the same
    await pool.execute("TRUNCATE feeds RESTART IDENTITY CASCADE")
    local = _env(database_url, state_dir)
    on_db = [await cli(local, "feeds", *args, code=code) for args, code in _steps(tmp_path)]
    for args_code, a, b in zip(_steps(tmp_path), over_api, on_db, strict=True):
        assert _normalized(a) == _normalized(b), args_code
    assert [
        tuple(r)
        for r in await pool.fetch("SELECT id, url, status, category FROM feeds ORDER BY id")
    ] == [tuple(r) for r in rows]


async def test_api_url_and_key_from_the_environment_and_their_errors(
    api_server: str, state_dir: Path, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    env = _env(NO_DATABASE, state_dir, NEWSDESK_API_URL=api_server, NEWSDESK_API_KEY=KEY)
    assert "added feed #1" in await cli(env, "feeds", "add", "https://a.example/rss")
    assert "1 feeds" in await cli(env, "feeds", "list")
    assert await pool.fetchval("SELECT url FROM feeds") == "https://a.example/rss"

    keyless = dict(env, NEWSDESK_API_KEY="")
    out = await cli(keyless, "feeds", "remove", "1", code=1)
    assert "refused the request (401)" in out and "NEWSDESK_API_KEY" in out
    out = await cli(env, "feeds", "list", "--api-key", "wrong", code=1)
    assert "(401)" in out
    assert await pool.fetchval("SELECT count(*) FROM feeds") == 1  # nothing removed

    closed = f"http://127.0.0.1:{_port({int(api_server.rsplit(':', 1)[1])})}"
    out = await cli(env, "feeds", "list", "--api", closed, code=1)
    assert f"cannot reach the API at {closed}" in out

    bad = tmp_path / "bad.opml"
    bad.write_bytes(b"<opml><body><outline")
    out = await cli(env, "feeds", "import", str(bad), code=2)
    assert "not valid XML" in out

    # the round trip: export, unsubscribe, import the export
    exported = tmp_path / "feeds.opml"
    await cli(env, "feeds", "export", "-o", str(exported))
    assert "removed feed #1" in await cli(env, "feeds", "remove", "https://a.example/rss")
    out = await cli(env, "feeds", "import", str(exported))
    assert "1 feeds in feeds.opml: 1 added, 0 already subscribed, 0 refused" in out
    assert await pool.fetchval("SELECT url FROM feeds") == "https://a.example/rss"


async def test_a_url_that_is_not_the_api_is_named_not_a_traceback(
    feed_server, state_dir: Path
) -> None:
    """--api pointing at some other web server: a page, a redirect, a plain 404."""
    feed_server.route("/page/v1/feeds", body=b"<html>hello</html>", content_type="text/html")
    feed_server.route("/moved/v1/feeds", status=301, location="https://elsewhere.example/")
    env = _env(NO_DATABASE, state_dir, NEWSDESK_API_KEY=KEY)

    out = await cli(env, "feeds", "list", "--api", feed_server.url("/page"), code=1)
    assert "did not answer as the Newsdesk API does (HTTP 200, text/html)" in out
    out = await cli(env, "feeds", "list", "--api", feed_server.url("/moved"), code=1)
    assert "redirects (HTTP 301) to https://elsewhere.example/" in out
    out = await cli(env, "feeds", "list", "--api", feed_server.url("/nothing"), code=1)
    assert "the API answered 404" in out
    out = await cli(
        env, "feeds", "list", "--status", "broken", "--api", feed_server.url(""), code=2
    )
    assert "no status 'broken'" in out
    assert feed_server.requests_to("/v1/feeds") == []  # refused before asking
