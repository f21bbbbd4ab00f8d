"""Feed administration over HTTP (``/v1/feeds``): the real Starlette app over the in-process
backend and a real PostgreSQL database; the model is never reached (its loader fails the test).
What the routes do is checked in the database and in what the poller would poll next."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest

from cluster.settings import Settings
from ingestion import store
from serving.deployments.local import LocalBackend, local_app
from serving.deployments.summarizer import Summarizer

KEY = "feeds-key"
AUTH = {"X-API-Key": KEY}
OPML = "text/x-opml"
LONG_URL = "https://long.example/" + "x" * 5000

GOOD_AND_BAD_OPML = f"""<?xml version="1.0" encoding="UTF-8"?>
<opml version="2.0">
  <head><title>mine</title></head>
  <body>
    <outline text="World">
      <outline type="rss" text="A" xmlUrl="https://a.example/rss"/>
      <outline text="Europe">
        <outline type="rss" text="B" xmlUrl="https://b.example/atom"/>
        <outline type="rss" text="FTP" xmlUrl="ftp://files.example/feed"/>
      </outline>
    </outline>
    <outline type="rss" text="Intranet" xmlUrl="http://10.1.2.3/feed"/>
    <outline type="rss" text="Long" xmlUrl="{LONG_URL}"/>
    <outline type="rss" text="C" xmlUrl="https://c.example/feed"/>
  </body>
</opml>""".encode()


def _no_model() -> Summarizer:
    pytest.fail("feed administration must not reach the model")


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    s = settings.model_copy(update={"api_key": KEY, "api_max_list_limit": 50})
    backend = LocalBackend(s, _no_model)
    await backend.startup()
    transport = httpx.ASGITransport(app=local_app(backend))
    async with httpx.AsyncClient(transport=transport, base_url="http://api", headers=AUTH) as c:
        yield c
    await backend.shutdown()


def _error(response: httpx.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code, error
    return error["message"]


async def _add(client: httpx.AsyncClient, url: str, **fields: object) -> dict:
    response = await client.post("/v1/feeds", json={"url": url, **fields})
    assert response.status_code == 201, response.text
    return response.json()


async def _due_ids(pool: asyncpg.Pool) -> list[int]:
    """The feeds the poller would take now (ingestion's own claim query)."""
    _, feeds = await store.claim_due_feeds(pool, limit=100, lease_s=60)
    await pool.execute("UPDATE feeds SET next_due_at = now(), lease_token = NULL")
    return sorted(f.id for f in feeds)


ROUTES = [
    ("GET", "/v1/feeds"),
    ("POST", "/v1/feeds"),
    ("GET", "/v1/feeds/1"),
    ("DELETE", "/v1/feeds/1"),
    ("POST", "/v1/feeds/1/enable"),
    ("POST", "/v1/feeds/1/disable"),
    ("POST", "/v1/feeds/import"),
    ("GET", "/v1/feeds/export.opml"),
]


@pytest.mark.parametrize(("method", "path"), ROUTES)
async def test_every_feed_route_needs_the_key(client, pool, method, path):
    await _add(client, "https://a.example/rss")
    for headers in ({"X-API-Key": ""}, {"X-API-Key": "wrong"}):
        response = await client.request(method, path, headers=headers, content=b"{}")
        _error(response, 401, "unauthorized")
    assert await pool.fetchval("SELECT count(*) FROM feeds") == 1  # nothing done
    assert (await pool.fetchrow("SELECT status FROM feeds"))["status"] == "active"


async def test_add_is_201_then_200_and_refuses_what_the_cli_refuses(client, pool):
    created = await client.post(
        "/v1/feeds",
        json={"url": "https://a.example/rss", "title": "A", "category": "World", "interval_s": 600},
    )
    assert created.status_code == 201, created.text
    feed = created.json()
    assert feed["url"] == "https://a.example/rss" and feed["title"] == "A"
    assert feed["category"] == "World" and feed["interval_s"] == 600
    assert feed["status"] == "active" and feed["enabled"] is True
    assert feed["next_poll_at"] and feed["last_fetched_at"] is None
    again = await client.post("/v1/feeds", json={"url": "https://a.example/rss", "title": "X"})
    assert again.status_code == 200 and again.json()["id"] == feed["id"]
    assert again.json()["title"] == "A"  # an existing feed is left as it was
    row = await pool.fetchrow("SELECT title, category, interval_s FROM feeds")
    assert dict(row) == {"title": "A", "category": "World", "interval_s": 600}

    message = _error(
        await client.post("/v1/feeds", json={"url": "ftp://files.example/feed"}),
        422,
        "invalid_feed_url",
    )
    assert "unsupported URL scheme 'ftp'" in message
    message = _error(
        await client.post("/v1/feeds", json={"url": "http://10.0.0.1/feed"}),
        422,
        "address_refused",
    )
    assert "private address" in message
    _error(await client.post("/v1/feeds", json={"url": "https://"}), 422, "invalid_feed_url")
    _error(await client.post("/v1/feeds", content=b"{nope"), 400, "malformed_json")
    message = _error(
        await client.post("/v1/feeds", json={"url": "https://b.example/", "colour": "red"}),
        422,
        "validation_error",
    )
    assert "colour" in message
    _error(
        await client.post("/v1/feeds", json={"url": "https://b.example/", "interval_s": 1}),
        422,
        "validation_error",
    )
    assert await pool.fetchval("SELECT count(*) FROM feeds") == 1


async def test_list_shows_state_filters_and_pages(client, pool):
    ids = [(await _add(client, f"https://f{i}.example/rss"))["id"] for i in range(5)]
    await pool.execute(
        "UPDATE feeds SET status = 'quarantined', consecutive_failures = 10, "
        "last_outcome = 'http_error', last_http_status = 500, last_error = 'HTTP 500', "
        "last_fetched_at = now(), articles_total = 7 WHERE id = $1",
        ids[1],
    )
    everything = (await client.get("/v1/feeds")).json()
    assert everything["count"] == 5 and everything["next_after"] is None
    bad = everything["feeds"][1]
    assert bad["status"] == "quarantined" and bad["enabled"] is True
    assert bad["last_outcome"] == "http_error" and bad["last_http_status"] == 500
    assert bad["last_error"] == "HTTP 500" and bad["consecutive_failures"] == 10
    assert bad["articles_total"] == 7 and bad["last_fetched_at"]

    only = (await client.get("/v1/feeds", params={"status": "quarantined"})).json()
    assert [f["id"] for f in only["feeds"]] == [ids[1]]
    by_url = (await client.get("/v1/feeds", params={"url": "https://f3.example/rss"})).json()
    assert [f["id"] for f in by_url["feeds"]] == [ids[3]]

    seen, after = [], 0
    while after is not None:
        page = (await client.get("/v1/feeds", params={"limit": 2, "after": after})).json()
        assert page["count"] == len(page["feeds"]) <= 2
        seen += [f["id"] for f in page["feeds"]]
        after = page["next_after"]
    assert seen == ids

    _error(await client.get("/v1/feeds", params={"status": "broken"}), 422, "validation_error")
    _error(await client.get("/v1/feeds", params={"limit": 51}), 422, "validation_error")
    _error(await client.get("/v1/feeds", params={"colour": "red"}), 422, "validation_error")


async def test_get_remove_and_unknown_ids(client, pool):
    feed = await _add(client, "https://a.example/rss")
    got = await client.get(f"/v1/feeds/{feed['id']}")
    assert got.status_code == 200 and got.json() == feed
    assert "no feed with id 999" in _error(await client.get("/v1/feeds/999"), 404, "not_found")
    assert "not 'abc'" in _error(await client.get("/v1/feeds/abc"), 422, "validation_error")
    _error(await client.delete("/v1/feeds/999"), 404, "not_found")
    _error(await client.post("/v1/feeds/999/enable"), 404, "not_found")
    _error(await client.post("/v1/feeds/999/disable"), 404, "not_found")

    removed = await client.delete(f"/v1/feeds/{feed['id']}")
    assert removed.status_code == 200 and removed.json()["url"] == "https://a.example/rss"
    assert await pool.fetchval("SELECT count(*) FROM feeds") == 0
    _error(await client.get(f"/v1/feeds/{feed['id']}"), 404, "not_found")


async def test_disable_and_enable_change_what_the_poller_polls(client, pool):
    a = await _add(client, "https://a.example/rss")
    b = await _add(client, "https://b.example/rss")
    assert await _due_ids(pool) == [a["id"], b["id"]]

    disabled = (await client.post(f"/v1/feeds/{a['id']}/disable")).json()
    assert disabled["status"] == "disabled" and disabled["enabled"] is False
    assert disabled["next_poll_at"] is None and disabled["last_error"] == "disabled by hand"
    assert await _due_ids(pool) == [b["id"]]
    listed = (await client.get("/v1/feeds", params={"status": "disabled"})).json()["feeds"]
    assert [f["id"] for f in listed] == [a["id"]]

    await pool.execute(
        "UPDATE feeds SET status = 'quarantined', consecutive_failures = 10, "
        "next_due_at = now() + interval '1 day' WHERE id = $1",
        b["id"],
    )
    assert await _due_ids(pool) == []
    for feed in (a, b):
        enabled = (await client.post(f"/v1/feeds/{feed['id']}/enable")).json()
        assert enabled["status"] == "active" and enabled["consecutive_failures"] == 0
        assert enabled["last_error"] is None and enabled["next_poll_at"]
    assert await _due_ids(pool) == [a["id"], b["id"]]  # due now, both
    assert {f["status"] for f in (await client.get("/v1/feeds")).json()["feeds"]} == {"active"}


async def test_opml_import_keeps_the_good_feeds_and_names_the_bad(client, pool):
    response = await client.post(
        "/v1/feeds/import", content=GOOD_AND_BAD_OPML, headers={"Content-Type": OPML}
    )
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["total"] == 6
    assert [f["url"] for f in report["added"]] == [
        "https://a.example/rss",
        "https://b.example/atom",
        "https://c.example/feed",
    ]
    assert [f["category"] for f in report["added"]] == ["World", "World/Europe", None]
    assert report["existing"] == []
    refused = {r["url"][:30]: r["reason"] for r in report["refused"]}
    assert "unsupported URL scheme 'ftp'" in refused["ftp://files.example/feed"]
    assert "private address" in refused["http://10.1.2.3/feed"]
    assert "at most 4096 characters" in refused[LONG_URL[:30]]
    rows = await pool.fetch("SELECT url, title, category FROM feeds ORDER BY id")
    assert [(r["url"], r["title"], r["category"]) for r in rows] == [
        ("https://a.example/rss", "A", "World"),
        ("https://b.example/atom", "B", "World/Europe"),
        ("https://c.example/feed", "C", None),
    ]

    again = await client.post(
        "/v1/feeds/import", content=GOOD_AND_BAD_OPML, headers={"Content-Type": "application/xml"}
    )
    assert [len(again.json()[k]) for k in ("added", "existing", "refused")] == [0, 3, 3]

    yaml_list = b"feeds:\n  - url: https://d.example/rss\n    title: D\n    interval_s: 1200\n"
    added = await client.post(
        "/v1/feeds/import", content=yaml_list, headers={"Content-Type": "application/yaml"}
    )
    assert [f["interval_s"] for f in added.json()["added"]] == [1200]
    assert await pool.fetchval("SELECT count(*) FROM feeds") == 4


@pytest.mark.parametrize(
    ("body", "media", "status", "code", "words"),
    [
        (b"<opml><body><outline", OPML, 400, "malformed_opml", "not valid XML"),
        (b"<rss><channel/></rss>", OPML, 400, "malformed_opml", "not an OPML document"),
        (
            b'<?xml version="1.0"?><!DOCTYPE opml [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
            b'<opml><body><outline text="&x;" xmlUrl="https://a.example/"/></body></opml>',
            OPML,
            400,
            "malformed_opml",
            "unsafe OPML",
        ),
        (b"   ", OPML, 400, "malformed_opml", "empty"),
        (b"feeds: [unclosed\n", "application/yaml", 400, "malformed_yaml", "cannot read"),
        (GOOD_AND_BAD_OPML, "application/json", 415, "unsupported_media_type", "text/x-opml"),
        (GOOD_AND_BAD_OPML, None, 415, "unsupported_media_type", "(none)"),
    ],
)
async def test_import_refuses_what_is_not_a_feed_list(
    client, pool, body, media, status, code, words
):
    headers = {"Content-Type": media} if media else {}
    response = await client.post("/v1/feeds/import", content=body, headers=headers)
    assert words in _error(response, status, code)
    assert await pool.fetchval("SELECT count(*) FROM feeds") == 0


async def test_export_is_opml_that_imports_back_to_the_same_feeds(client, pool):
    await _add(client, "https://a.example/rss", title="A & B <news>", category="World")
    await _add(client, "https://b.example/atom", category="World/Europe")
    assert (await _add(client, "https://c.example/feed", title="C", category=" "))[
        "category"
    ] is None
    await pool.execute("UPDATE feeds SET site_url = 'https://c.example/' WHERE title = 'C'")
    before = await pool.fetch("SELECT url, title, category FROM feeds ORDER BY url")

    exported = await client.get("/v1/feeds/export.opml")  # not taken for a feed id
    assert exported.status_code == 200, exported.text
    assert exported.headers["content-type"].startswith("text/x-opml")
    document = exported.content
    assert document.startswith(b"<?xml") and b'<opml version="2.0">' in document
    assert b'htmlUrl="https://c.example/"' in document

    await pool.execute("DELETE FROM feeds")
    response = await client.post(
        "/v1/feeds/import", content=document, headers={"Content-Type": OPML}
    )
    assert len(response.json()["added"]) == 3 and response.json()["refused"] == []
    after = await pool.fetch("SELECT url, title, category FROM feeds ORDER BY url")
    assert [dict(r) for r in after] == [dict(r) for r in before]


async def test_openapi_documents_the_feed_routes_behind_the_key(client):
    spec = (await client.get("/openapi.json")).json()
    for method, path in ROUTES:
        path = path.replace("/1", "/{feed_id}")
        op = spec["paths"][path][method.lower()]
        assert op["security"] == [{"ApiKey": []}] and op["tags"] == ["feeds"]
    assert "FeedInfo" in spec["components"]["schemas"]
    assert "ImportReport" in spec["components"]["schemas"]


def test_the_rules_come_from_the_ingestion_section_or_the_environment(tmp_path, monkeypatch):
    """In one process the composite settings carry them; a Serve replica, handed only the
    serving section, reads them from its environment like the poller on the same cluster."""
    from serving.http.routes.feed_admin import feed_rules
    from serving.settings import ServingSettings

    settings = Settings(state_dir=tmp_path, allow_loopback=True)
    assert feed_rules(settings).allow_loopback is True  # the test's settings
    monkeypatch.setenv("NEWSDESK_ALLOW_PRIVATE_ADDRESSES", "true")
    monkeypatch.setenv("NEWSDESK_FEED_INTERVAL_S", "1234")
    rules = feed_rules(settings.section(ServingSettings))
    assert rules.allow_private_addresses is True and rules.feed_interval_s == 1234
    assert feed_rules(settings).allow_private_addresses is False  # the section wins
