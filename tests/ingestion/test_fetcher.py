"""The fetcher against a real local HTTP server: validators, Retry-After, timeouts, redirects,
status codes, the size cap, the address guard, file:// and the concurrency limits."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import pytest

from cluster.settings import Settings
from core.urlguard import BlockedAddressError, GuardedBackend, check_url
from ingestion.fetcher import Fetcher, FetchOutcome, parse_retry_after
from tests.support.feedserver import FeedServer, items, rss_document

FEED = rss_document(items(3))


def make_settings(tmp_path: Path, **kw: object) -> Settings:
    base: dict[str, object] = {
        "state_dir": tmp_path,
        "allow_loopback": True,
        "fetch_timeout_s": 3,
        "backoff_base_s": 1,
    }
    base.update(kw)
    return Settings(**base)  # type: ignore[arg-type]


async def fetch(settings: Settings, url: str, **kw: str | None):  # type: ignore[no-untyped-def]
    async with Fetcher(settings) as fetcher:
        return await fetcher.fetch(url, **kw)


async def test_ok_sends_user_agent_and_returns_body_and_validators(feed_server, tmp_path):
    feed_server.route("/f.xml", body=FEED, etag='W/"abc-123"', last_modified="Tue, 10 Jun 2025")
    s = make_settings(tmp_path)
    r = await fetch(s, feed_server.url("/f.xml"))
    assert r.outcome == FetchOutcome.OK and r.status == 200
    assert r.body == FEED
    assert r.etag == 'W/"abc-123"' and r.last_modified == "Tue, 10 Jun 2025"
    assert r.headers["content-type"].startswith("application/rss+xml")
    sent = feed_server.requests_to("/f.xml")[0].headers
    assert sent["User-Agent"] == s.user_agent and "Newsdesk" in sent["User-Agent"]
    assert "If-None-Match" not in sent


async def test_conditional_get_echoes_validators_exactly_and_304(feed_server, tmp_path):
    # Odd but legal values: they must come back byte for byte, not re-formatted.
    etag = 'W/"x y;z"'
    modified = "Tue, 10 Jun 2025 04:00:00 GMT"
    feed_server.route("/f.xml", body=FEED, etag=etag, last_modified=modified)
    s = make_settings(tmp_path)
    first = await fetch(s, feed_server.url("/f.xml"))
    second = await fetch(
        s, feed_server.url("/f.xml"), etag=first.etag, last_modified=first.last_modified
    )
    assert second.outcome == FetchOutcome.NOT_MODIFIED and second.status == 304
    assert second.body == b""
    sent = feed_server.requests_to("/f.xml")[1].headers
    assert sent["If-None-Match"] == etag
    assert sent["If-Modified-Since"] == modified
    assert second.etag == etag and second.last_modified == modified


async def test_last_modified_alone_gives_304(feed_server, tmp_path):
    modified = "Mon, 09 Jun 2025 10:00:00 GMT"
    feed_server.route("/f.xml", body=FEED, last_modified=modified)
    r = await fetch(make_settings(tmp_path), feed_server.url("/f.xml"), last_modified=modified)
    assert r.outcome == FetchOutcome.NOT_MODIFIED
    assert feed_server.requests_to("/f.xml")[0].headers["If-Modified-Since"] == modified


async def test_changed_etag_gives_the_new_body(feed_server, tmp_path):
    feed_server.route("/f.xml", body=FEED, etag='"v2"')
    r = await fetch(make_settings(tmp_path), feed_server.url("/f.xml"), etag='"v1"')
    assert r.outcome == FetchOutcome.OK and r.etag == '"v2"' and r.body == FEED


@pytest.mark.parametrize(
    ("status", "headers", "outcome", "retry_after"),
    [
        (429, {"Retry-After": "120"}, FetchOutcome.RATE_LIMITED, 120.0),
        (503, {"Retry-After": "30"}, FetchOutcome.RATE_LIMITED, 30.0),
        (429, {}, FetchOutcome.RATE_LIMITED, None),
        (503, {}, FetchOutcome.HTTP_ERROR, None),
        (429, {"Retry-After": "999999"}, FetchOutcome.RATE_LIMITED, 3600.0),  # capped
    ],
)
async def test_retry_after(feed_server, tmp_path, status, headers, outcome, retry_after):
    feed_server.route("/f.xml", status=status, headers=headers)
    r = await fetch(make_settings(tmp_path, retry_after_cap_s=3600), feed_server.url("/f.xml"))
    assert r.outcome == outcome and r.status == status
    assert r.retry_after_s == retry_after
    assert str(status) in (r.reason or "")


async def test_retry_after_http_date(feed_server, tmp_path):
    when = datetime.now(UTC) + timedelta(seconds=300)
    feed_server.route(
        "/f.xml", status=503, headers={"Retry-After": format_datetime(when, usegmt=True)}
    )
    r = await fetch(make_settings(tmp_path), feed_server.url("/f.xml"))
    assert r.outcome == FetchOutcome.RATE_LIMITED
    assert r.retry_after_s is not None and 290 <= r.retry_after_s <= 301


def test_parse_retry_after_forms():
    now = datetime(2025, 6, 10, 12, 0, tzinfo=UTC)
    assert parse_retry_after("60", cap_s=100, now=now) == 60
    assert parse_retry_after("Tue, 10 Jun 2025 12:02:00 GMT", cap_s=1000, now=now) == 120
    assert parse_retry_after("Tue, 10 Jun 2025 11:00:00 GMT", cap_s=1000, now=now) == 0  # past
    assert parse_retry_after("soon", cap_s=100, now=now) is None
    assert parse_retry_after(None, cap_s=100) is None


async def test_slow_server_hits_the_timeout(feed_server, tmp_path):
    feed_server.route("/slow.xml", body=FEED, delay_s=3)
    started = time.monotonic()
    r = await fetch(make_settings(tmp_path, fetch_timeout_s=0.5), feed_server.url("/slow.xml"))
    assert r.outcome == FetchOutcome.TIMEOUT
    assert "0.5 s" in (r.reason or "")
    assert time.monotonic() - started < 2.5


async def test_trickling_server_hits_the_total_timeout(feed_server, tmp_path):
    # Each chunk arrives well within a per-read timeout; the whole body does not.
    feed_server.route("/drip.xml", body=FEED, chunk_size=200, chunk_delay_s=0.2)
    r = await fetch(make_settings(tmp_path, fetch_timeout_s=1), feed_server.url("/drip.xml"))
    assert r.outcome == FetchOutcome.TIMEOUT


async def test_redirects_are_followed_and_permanent_ones_reported(feed_server, tmp_path):
    feed_server.route("/old.xml", status=301, location="/mid.xml")
    feed_server.route("/mid.xml", status=308, location=feed_server.url("/f.xml"))
    feed_server.route("/f.xml", body=FEED)
    r = await fetch(make_settings(tmp_path), feed_server.url("/old.xml"))
    assert r.outcome == FetchOutcome.OK and r.body == FEED
    assert r.final_url == feed_server.url("/f.xml")
    assert r.permanent_redirect == feed_server.url("/f.xml")

    feed_server.route("/tmp.xml", status=302, location="/f.xml")
    r = await fetch(make_settings(tmp_path), feed_server.url("/tmp.xml"))
    assert r.outcome == FetchOutcome.OK and r.permanent_redirect is None


async def test_redirect_loop_has_a_clear_reason(feed_server, tmp_path):
    feed_server.route("/a.xml", status=302, location="/b.xml")
    feed_server.route("/b.xml", status=302, location="/a.xml")
    r = await fetch(make_settings(tmp_path), feed_server.url("/a.xml"))
    assert r.outcome == FetchOutcome.REDIRECT_ERROR
    assert "loop" in (r.reason or "") and "/a.xml -> " in (r.reason or "")
    assert feed_server.hits("/a.xml") == 1 and feed_server.hits("/b.xml") == 1


async def test_too_many_redirects(feed_server, tmp_path):
    for i in range(5):
        feed_server.route(f"/r{i}", status=302, location=f"/r{i + 1}")
    feed_server.route("/r5", body=FEED)
    r = await fetch(make_settings(tmp_path, fetch_max_redirects=3), feed_server.url("/r0"))
    assert r.outcome == FetchOutcome.REDIRECT_ERROR
    assert "more than 3 redirects" in (r.reason or "")
    ok = await fetch(make_settings(tmp_path, fetch_max_redirects=5), feed_server.url("/r0"))
    assert ok.outcome == FetchOutcome.OK


async def test_redirect_without_location(feed_server, tmp_path):
    feed_server.route("/a.xml", status=302)
    r = await fetch(make_settings(tmp_path), feed_server.url("/a.xml"))
    assert r.outcome == FetchOutcome.REDIRECT_ERROR and "Location" in (r.reason or "")


@pytest.mark.parametrize(
    ("status", "outcome"),
    [(404, FetchOutcome.HTTP_ERROR), (410, FetchOutcome.GONE), (500, FetchOutcome.HTTP_ERROR)],
)
async def test_error_statuses(feed_server, tmp_path, status, outcome):
    feed_server.route("/f.xml", status=status, body=b"<html>error page</html>")
    r = await fetch(make_settings(tmp_path), feed_server.url("/f.xml"))
    assert r.outcome == outcome and r.status == status
    assert r.reason and r.reason.startswith(f"HTTP {status}")
    assert r.body == b""


@pytest.mark.parametrize("send_length", [True, False])
async def test_body_over_the_cap_is_aborted(feed_server, tmp_path, send_length):
    cap = 64 * 1024
    huge = rss_document(items(2000))  # ~400 KB
    assert len(huge) > 4 * cap
    feed_server.route("/huge.xml", body=huge, send_length=send_length, chunk_size=8192)
    r = await fetch(make_settings(tmp_path, fetch_max_bytes=cap), feed_server.url("/huge.xml"))
    assert r.outcome == FetchOutcome.TOO_LARGE
    assert "cap" in (r.reason or "") and r.body == b""


async def test_body_at_the_cap_is_fine(feed_server, tmp_path):
    feed_server.route("/f.xml", body=FEED, send_length=False)
    r = await fetch(make_settings(tmp_path, fetch_max_bytes=len(FEED)), feed_server.url("/f.xml"))
    assert r.outcome == FetchOutcome.OK and r.body == FEED


async def test_the_default_cap_is_15_mib(tmp_path):
    assert make_settings(tmp_path).fetch_max_bytes == 15 * 1024 * 1024


async def test_connection_refused_is_a_network_error(tmp_path):
    server = FeedServer().start()
    url = server.url("/f.xml")
    server.stop()  # nothing listens there any more
    r = await fetch(make_settings(tmp_path), url)
    assert r.outcome == FetchOutcome.NETWORK_ERROR and r.reason


# --- the address guard ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("http://10.1.2.3/feed", "private"),
        ("http://192.168.0.10/feed", "private"),
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://[fe80::1]/feed", "link-local"),
        ("http://127.0.0.1:9/feed", "loopback"),
        ("http://[::1]/feed", "loopback"),
        ("http://[::ffff:127.0.0.1]/feed", "loopback"),
        ("http://localhost/feed", "loopback"),
        ("http://0.0.0.0/feed", "unspecified"),
        ("http://224.0.0.1/feed", "multicast"),
        ("http://240.0.0.1/feed", "reserved"),
    ],
)
async def test_private_addresses_are_refused_by_default(tmp_path, url, words):
    s = make_settings(tmp_path, allow_loopback=False, allow_private_addresses=False)
    r = await fetch(s, url)
    assert r.outcome == FetchOutcome.BLOCKED
    assert r.reason and r.reason.startswith("refused") and words in r.reason


def _loopback_name() -> str | None:
    """A host name (not "localhost", which the URL check catches) resolving to 127.0.0.1."""
    for name in (socket.gethostname(), "localhost.", "localhost.localdomain", "ip6-localhost"):
        try:
            infos = socket.getaddrinfo(name, 80, type=socket.SOCK_STREAM)
        except OSError:
            continue
        if infos and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos):
            if any(i[0] == socket.AF_INET for i in infos):
                return name
    return None


async def test_a_name_resolving_to_loopback_is_refused_at_connect(feed_server, tmp_path):
    # The URL check cannot know where a name points; the connect-time guard resolves it and
    # refuses the loopback address before any byte is sent.
    name = _loopback_name()
    if name is None:
        pytest.skip("no host name on this machine resolves to loopback only")
    feed_server.route("/f.xml", body=FEED)
    url = f"http://{name}:{feed_server.port}/f.xml"
    r = await fetch(make_settings(tmp_path, allow_loopback=False), url)
    assert r.outcome == FetchOutcome.BLOCKED and "loopback" in (r.reason or "")
    assert feed_server.hits("/f.xml") == 0
    allowed = await fetch(make_settings(tmp_path, allow_loopback=True), url)
    assert allowed.outcome == FetchOutcome.OK


async def test_guarded_backend_refuses_before_connecting():
    backend = GuardedBackend(allow_private=False, allow_loopback=False)
    with pytest.raises(BlockedAddressError, match="loopback"):
        await backend.connect_tcp("localhost", 80)


async def test_redirect_to_a_private_address_is_refused(feed_server, tmp_path):
    # Loopback is allowed (the test server), private networks are not: the hop is checked.
    feed_server.route("/f.xml", status=302, location="http://169.254.169.254/latest/meta-data")
    r = await fetch(make_settings(tmp_path), feed_server.url("/f.xml"))
    assert r.outcome == FetchOutcome.BLOCKED and "link-local" in (r.reason or "")
    assert "redirect to http://169.254.169.254" in (r.reason or "")


async def test_redirect_to_a_file_url_is_refused(feed_server, tmp_path):
    feed_server.route("/f.xml", status=302, location="file:///etc/passwd")
    r = await fetch(make_settings(tmp_path), feed_server.url("/f.xml"))
    assert r.outcome == FetchOutcome.REDIRECT_ERROR and "scheme 'file'" in (r.reason or "")


async def test_private_addresses_allowed_by_setting(tmp_path):
    assert (
        check_url("http://10.0.0.5/f", allow_private=True, allow_loopback=False, allow_file=False)
        is None
    )
    assert "loopback" in (
        check_url("http://127.0.0.1/f", allow_private=True, allow_loopback=False, allow_file=False)
        or ""
    )


@pytest.mark.parametrize(
    "url", ["ftp://example.com/feed", "javascript:alert(1)", "gopher://x", "http:///nohost", ""]
)
async def test_bad_urls_are_invalid(tmp_path, url):
    r = await fetch(make_settings(tmp_path), url)
    assert r.outcome == FetchOutcome.INVALID_URL and r.reason


# --- file:// --------------------------------------------------------------------------------


async def test_file_urls_work_offline_with_not_modified(tmp_path):
    path = tmp_path / "feed.xml"
    path.write_bytes(FEED)
    s = make_settings(tmp_path)
    first = await fetch(s, path.as_uri())
    assert first.outcome == FetchOutcome.OK and first.body == FEED and first.etag
    again = await fetch(s, path.as_uri(), etag=first.etag)
    assert again.outcome == FetchOutcome.NOT_MODIFIED
    missing = await fetch(s, (tmp_path / "nope.xml").as_uri())
    assert missing.outcome == FetchOutcome.READ_ERROR and "nope.xml" in (missing.reason or "")


async def test_file_urls_can_be_switched_off(tmp_path):
    path = tmp_path / "feed.xml"
    path.write_bytes(FEED)
    r = await fetch(make_settings(tmp_path, allow_file_urls=False), path.as_uri())
    assert r.outcome == FetchOutcome.INVALID_URL and "ALLOW_FILE_URLS" in (r.reason or "")


# --- concurrency -----------------------------------------------------------------------------


async def test_per_host_and_global_limits(tmp_path):
    servers = [FeedServer().start(), FeedServer(host="127.0.0.2").start()]
    try:
        for srv in servers:
            for i in range(6):
                srv.route(f"/f{i}.xml", body=FEED, delay_s=0.4)
        s = make_settings(tmp_path, fetch_per_host=2, fetch_concurrency=3)
        urls = [f"http://127.0.0.1:{servers[0].port}/f{i}.xml" for i in range(6)]
        urls += [f"http://127.0.0.2:{servers[1].port}/f{i}.xml" for i in range(6)]
        async with Fetcher(s) as fetcher:
            started = time.monotonic()
            results = await asyncio.gather(*(fetcher.fetch(u) for u in urls))
            elapsed = time.monotonic() - started
        assert all(r.outcome == FetchOutcome.OK for r in results)

        def peak(srv: FeedServer) -> int:
            # Requests whose 0.4 s service windows overlap, from their arrival times.
            times = sorted(r.at for r in srv._requests)
            return max(sum(1 for u in times if t <= u < t + 0.39) for t in times)

        assert peak(servers[0]) <= 2 and peak(servers[1]) <= 2
        # 12 fetches of 0.4 s, at most 3 at once: at least 4 rounds.
        assert elapsed >= 4 * 0.4 - 0.05
    finally:
        for srv in servers:
            srv.stop()
