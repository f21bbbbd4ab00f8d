"""The feeds and ingest commands through typer's CliRunner, against real PostgreSQL and a real
local HTTP server. The environment is handed to each invocation (CliRunner scopes it to the
call); the process environment is never changed for other tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from cluster.cli import app
from tests.support.feedserver import items, rss_document

runner = CliRunner()


@pytest.fixture
def env(database_url: str, state_dir: Path) -> dict[str, str]:
    return {
        "NEWSDESK_DATABASE_URL": database_url,
        "NEWSDESK_STATE_DIR": str(state_dir),
        "NEWSDESK_ALLOW_LOOPBACK": "true",
        "NEWSDESK_FETCH_TIMEOUT_S": "3",
        "COLUMNS": "250",  # wide tables: one row per line
    }


def cli(env: dict[str, str], *args: str, code: int = 0) -> str:
    result = runner.invoke(app, list(args), env=env)
    assert result.exit_code == code, (args, result.output, result.exception)
    return result.output


def test_feeds_add_list_remove_and_ingest_once(env, feed_server, tmp_path):
    feed_server.route("/a.xml", body=rss_document(items(4)), etag='"a"')
    feed_server.route("/b.xml", body=rss_document(items(4)))  # same stories: copies
    feed_server.route("/gone.xml", status=404)

    out = cli(env, "feeds", "add", feed_server.url("/a.xml"), "--interval", "600")
    assert "added feed #1" in out and "every 600s" in out
    assert "already subscribed: feed #1" in cli(env, "feeds", "add", feed_server.url("/a.xml"))
    cli(env, "feeds", "add", feed_server.url("/b.xml"), "--title", "Bee")
    cli(env, "feeds", "add", feed_server.url("/gone.xml"))

    out = cli(env, "ingest", "--once")
    assert "polling feeds" in out and "3/3" in out
    row = next(line for line in out.splitlines() if line.count("│") >= 6 and "2" in line)
    cells = [c.strip() for c in row.split("│") if c.strip()]
    # feeds ok / not modified / failed / articles new / duplicate / rejected
    assert cells == ["2", "0", "1", "8", "0", "0"], out
    assert "4 new articles repeat a stored text" in out
    assert "http_error #3" in out and "HTTP 404 Not Found" in out

    listing = cli(env, "feeds", "list")
    assert "Bee" in listing and "HTTP 404 Not Found" in listing
    assert "http_error (404)" in listing and "ok (200)" in listing
    assert "active x1" in listing  # one failure in a row so far

    out = cli(env, "ingest", "--once", "--all")
    row = next(line for line in out.splitlines() if line.count("│") >= 6 and "0" in line)
    cells = [c.strip() for c in row.split("│") if c.strip()]
    assert cells[:4] == ["0", "2", "1", "0"], out  # validators / same bytes: not modified

    assert "is disabled" in cli(env, "feeds", "disable", "3")
    assert "quarantined" not in cli(env, "feeds", "list", "--status", "disabled")
    assert "is active" in cli(env, "feeds", "enable", feed_server.url("/gone.xml"))
    assert "removed feed #3" in cli(env, "feeds", "remove", "3")
    assert "no feed 3" in cli(env, "feeds", "remove", "3", code=1)
    assert "removed feed #2" in cli(env, "feeds", "remove", feed_server.url("/b.xml"))
    assert "1 feeds" in cli(env, "feeds", "list")


def test_feeds_add_refuses_bad_urls(env):
    out = cli(env, "feeds", "add", "ftp://example.com/feed", code=2)
    assert "unsupported URL scheme 'ftp'" in out
    private = dict(env, NEWSDESK_ALLOW_LOOPBACK="false")
    out = cli(private, "feeds", "add", "http://127.0.0.1:8080/feed", code=2)
    assert "loopback" in out
    out = cli(env, "feeds", "add", "http://10.0.0.1/feed", code=2)
    assert "private" in out
    assert "no feeds" in cli(env, "feeds", "list")


def test_feeds_import_opml_and_yaml(env, tmp_path, feed_server):
    opml = tmp_path / "subs.opml"
    opml.write_text(
        '<?xml version="1.0"?><opml version="2.0"><body><outline text="News">'
        f'<outline text="Local" xmlUrl="{feed_server.url("/l.xml")}"/>'
        '<outline text="Private" xmlUrl="http://10.1.1.1/rss"/>'
        "</outline></body></opml>"
    )
    out = cli(env, "feeds", "import", str(opml))
    assert "2 feeds in subs.opml: 1 added, 0 already subscribed, 1 refused" in out
    assert "http://10.1.1.1/rss" in out and "private" in out
    yaml_file = tmp_path / "feeds.yaml"
    yaml_file.write_text(
        f"defaults: {{interval_s: 1200}}\nfeeds:\n  - url: {feed_server.url('/l.xml')}\n"
        f"  - url: {feed_server.url('/m.xml')}\n    title: Em\n"
    )
    out = cli(env, "feeds", "import", str(yaml_file))
    assert "2 feeds in feeds.yaml: 1 added, 1 already subscribed, 0 refused" in out
    listing = cli(env, "feeds", "list")
    assert "Em" in listing and "1200s" in listing

    bad = tmp_path / "bad.opml"
    bad.write_text('<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><opml/>')
    assert "unsafe OPML" in cli(env, "feeds", "import", str(bad), code=2)
