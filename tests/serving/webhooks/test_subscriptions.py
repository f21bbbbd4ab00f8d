"""Webhook subscriptions and matching on real PostgreSQL: the /v1/webhooks API in-process
(validation, the address guard, the API key, no secret ever listed), ``newsdesk webhooks``,
and which events the matcher enqueues as stories are assigned and summarized through the real
paths (filters, growth past the threshold, never twice)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from typer.testing import CliRunner

from cluster.cli import app as cli_app
from cluster.settings import Settings
from serving.deployments.local import LocalBackend, local_app
from serving.deployments.summarizer import Summarizer
from serving.stories.store import assign_articles
from serving.webhooks import store
from serving.webhooks.matcher import enqueue_for_stories
from serving.webhooks.schemas import WebhookCreate, WebhookEvent
from serving.webhooks.subscriptions import SubscribePolicy, subscribe
from tests.support.webhooks import GroupEmbedder, add_articles, assign, events, summarize

KEY = "hook-key-123"
AUTH = {"X-API-Key": KEY}


def _no_model() -> Summarizer:
    pytest.fail("this request must not reach the model")


async def _client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    backend = LocalBackend(settings, _no_model)
    await backend.startup()
    transport = httpx.ASGITransport(app=local_app(backend))
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as c:
        yield c
    await backend.shutdown()


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async for c in _client(settings.model_copy(update={"api_key": KEY})):
        yield c


# --- the API -----------------------------------------------------------------------------------


async def test_subscribe_list_get_delete(client: httpx.AsyncClient) -> None:
    body = {
        "url": "https://hooks.example.com/newsdesk",
        "min_importance": 60,
        "topics": ["Politics", "science"],
        "sources": ["Test Wire"],
        "growth_step": 5,
        "growth_metric": "sources",
    }
    r = await client.post("/v1/webhooks", json=body, headers=AUTH)
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["secret"].startswith("whsec_") and len(created["secret"]) > 40
    assert r.headers["location"] == f"/v1/webhooks/{created['id']}"
    assert created["topics"] == ["Politics", "science"] and created["growth_step"] == 5

    own = await client.post(
        "/v1/webhooks",
        json={"url": "https://b.example.com/h", "secret": "my-own-secret-0123456789"},
        headers=AUTH,
    )
    assert own.status_code == 201 and own.json()["secret"] == "my-own-secret-0123456789"
    assert own.json()["growth_step"] == 3 and own.json()["growth_metric"] == "articles"

    listing = await client.get("/v1/webhooks", headers=AUTH)
    assert listing.status_code == 200 and listing.json()["count"] == 2
    assert "secret" not in listing.text and "whsec_" not in listing.text
    one = await client.get(f"/v1/webhooks/{created['id']}", headers=AUTH)
    assert one.status_code == 200 and "secret" not in one.json()
    assert one.json()["url"] == body["url"] and one.json()["pending"] == 0

    assert (await client.delete(f"/v1/webhooks/{created['id']}", headers=AUTH)).status_code == 204
    assert (await client.get(f"/v1/webhooks/{created['id']}", headers=AUTH)).status_code == 404
    assert (await client.delete(f"/v1/webhooks/{created['id']}", headers=AUTH)).status_code == 404
    gone = await client.get(f"/v1/webhooks/{created['id']}/deliveries", headers=AUTH)
    assert gone.status_code == 404
    assert (await client.get("/v1/webhooks/abc", headers=AUTH)).status_code == 422


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "url"),
        ({"url": "https://a.example.com/h", "min_importance": 150}, "min_importance"),
        ({"url": "https://a.example.com/h", "growth_step": 0}, "growth_step"),
        ({"url": "https://a.example.com/h", "growth_metric": "likes"}, "growth_metric"),
        ({"url": "https://a.example.com/h", "topics": [""]}, "topics"),
        ({"url": "https://a.example.com/h", "secret": "short"}, "secret"),
        ({"url": "https://a.example.com/h", "colour": "red"}, "colour"),
        ({"url": "ftp://a.example.com/h"}, "url"),
        ({"url": "not a url"}, "url"),
        ({"url": "http://10.1.2.3/hook"}, "url"),
        ({"url": "http://169.254.169.254/latest/meta-data"}, "url"),
        ({"url": "http://127.0.0.1:8620/hook"}, "url"),
        ({"url": "http://localhost:8620/hook"}, "url"),
        ({"url": "http://[::1]:8620/hook"}, "url"),
    ],
)
async def test_bad_input_is_a_422_naming_the_field(
    client: httpx.AsyncClient, body: dict, field: str
) -> None:
    r = await client.post("/v1/webhooks", json=body, headers=AUTH)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "validation_error"
    assert any(field in d["loc"] for d in error["details"]), error
    if field == "url" and "10.1.2.3" in body.get("url", ""):
        assert "NEWSDESK_WEBHOOK_ALLOW_PRIVATE_ADDRESSES" in error["message"]
    if "127.0.0.1" in body.get("url", "") or "localhost" in body.get("url", ""):
        assert "NEWSDESK_WEBHOOK_ALLOW_LOOPBACK" in error["message"]


async def test_settings_allow_loopback_and_private_urls(settings: Settings) -> None:
    allowing = settings.model_copy(
        update={"webhook_allow_loopback": True, "webhook_allow_private_addresses": True}
    )
    async for c in _client(allowing):
        for url in ("http://127.0.0.1:8620/hook", "http://10.1.2.3/hook"):
            assert (await c.post("/v1/webhooks", json={"url": url})).status_code == 201
        # the feeds' own setting (allow_loopback, on in tests) does not open webhooks
    async for c in _client(settings):
        r = await c.post("/v1/webhooks", json={"url": "http://127.0.0.1:8620/hook"})
        assert r.status_code == 422


async def test_every_route_needs_the_key_when_one_is_configured(
    client: httpx.AsyncClient,
) -> None:
    for method, path in (
        ("POST", "/v1/webhooks"),
        ("GET", "/v1/webhooks"),
        ("GET", "/v1/webhooks/1"),
        ("DELETE", "/v1/webhooks/1"),
        ("GET", "/v1/webhooks/1/deliveries"),
    ):
        r = await client.request(method, path, json={"url": "https://a.example.com/h"})
        assert r.status_code == 401, (method, path, r.text)
        wrong = await client.request(method, path, headers={"X-API-Key": "nope"})
        assert wrong.status_code == 401
    spec = (await client.get("/openapi.json")).json()
    assert "/v1/webhooks/{webhook_id}/deliveries" in spec["paths"]


# --- matching ----------------------------------------------------------------------------------


async def _hook(pool: asyncpg.Pool, **fields: object) -> int:
    request = WebhookCreate(url="https://hooks.example.com/h", **fields)  # type: ignore[arg-type]
    return (await subscribe(pool, request, SubscribePolicy())).id


async def test_filters_min_importance_topic_and_source(
    pool: asyncpg.Pool, settings: Settings
) -> None:
    everything = await _hook(pool)
    important = await _hook(pool, min_importance=60)
    science = await _hook(pool, topics=["SCIENCE", "weather"])
    other_wire = await _hook(pool, sources=["other wire"])
    both = await _hook(pool, min_importance=60, sources=["Other Wire"])

    quake = await add_articles(pool, "quake", source="Test Wire")  # 75, politics
    comet = await add_articles(pool, "comet", source="Other Wire")  # 40, science
    await add_articles(pool, "budget")  # never summarized: matches nothing
    await summarize(pool, quake, 75, ["politics"])
    await summarize(pool, comet, 40, ["science"])
    assert await events(pool) == []  # Results alone: no story yet
    await assign(pool, settings)

    stories = {r["story_id"] for r in await events(pool)}
    assert len(stories) == 2

    def story_titles(hook: int) -> list[str]:
        return sorted(
            json.loads(r["body"])["story"]["articles"][0]["title"].split()[0]
            for r in got
            if r["webhook_id"] == hook
        )

    got = await events(pool)
    assert story_titles(everything) == ["comet", "quake"]
    assert story_titles(important) == ["quake"]
    assert story_titles(science) == ["comet"]
    assert story_titles(other_wire) == ["comet"]
    assert story_titles(both) == []  # comet is from Other Wire but not important
    for r in got:
        event = WebhookEvent.model_validate_json(r["body"])  # the documented schema
        assert event.type == "story.matched" and event.growth is None
        assert event.id == r["event_id"] and event.webhook_id == r["webhook_id"]
        assert event.story.n_articles == 1 and event.story.articles[0].summary

    # a later Result that lifts a story over the bar fires the webhook then
    more = await add_articles(pool, "comet", source="Other Wire")
    await assign(pool, settings)
    assert story_titles(both) == []
    await summarize(pool, more, 90, ["science"])
    got = await events(pool)
    assert story_titles(both) == ["comet"] and story_titles(important) == ["comet", "quake"]


async def test_growth_past_the_threshold_emits_one_more_event(
    pool: asyncpg.Pool, settings: Settings
) -> None:
    hook = await _hook(pool, growth_step=2)
    by_sources = await _hook(pool, growth_step=1, growth_metric="sources")
    first = await add_articles(pool, "flood")
    await summarize(pool, first, 55)
    await assign(pool, settings)
    assert [r["kind"] for r in await events(pool, hook)] == ["story.matched"]

    await add_articles(pool, "flood")  # 2 articles: below 1 + 2
    await assign(pool, settings)
    assert [r["kind"] for r in await events(pool, hook)] == ["story.matched"]
    assert [r["kind"] for r in await events(pool, by_sources)] == ["story.matched"]

    await add_articles(pool, "flood", 1, source="Second Wire")  # 3 articles, 2 sources
    await assign(pool, settings)
    rows = await events(pool, hook)
    assert [r["kind"] for r in rows] == ["story.matched", "story.grew"]
    grew = WebhookEvent.model_validate_json(rows[1]["body"])
    assert grew.growth is not None and (grew.growth.previous, grew.growth.current) == (1, 3)
    assert grew.story.n_articles == 3 and grew.story.n_sources == 2
    assert [r["kind"] for r in await events(pool, by_sources)] == ["story.matched", "story.grew"]

    await add_articles(pool, "flood")  # 4: below 3 + 2
    await assign(pool, settings)
    assert len(await events(pool, hook)) == 2

    # the matcher run again over the same state enqueues nothing (idempotent)
    story_id = rows[0]["story_id"]
    async with pool.acquire() as conn, conn.transaction():
        assert await enqueue_for_stories(conn, [story_id]) == 0
    await add_articles(pool, "flood")  # 5 = 3 + 2
    await assign(pool, settings)
    assert [r["size"] for r in await events(pool, hook)] == [1, 3, 5]


async def test_a_rolled_back_change_enqueues_nothing(pool: asyncpg.Pool) -> None:
    hook = await _hook(pool)
    articles = await add_articles(pool, "storm")
    await summarize(pool, articles, 50)

    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        async with pool.acquire() as conn, conn.transaction():
            report = await assign_articles(
                conn, articles, GroupEmbedder().embed(articles), threshold=0.8, window_h=48
            )
            assert await enqueue_for_stories(conn, report.stories) == 1
            raise Boom
    assert await events(pool, hook) == []
    with pytest.raises(RuntimeError, match="inside the changing transaction"):
        async with pool.acquire() as conn:
            await enqueue_for_stories(conn, [1])


async def test_no_webhooks_no_events_and_deleting_drops_them(
    pool: asyncpg.Pool, settings: Settings
) -> None:
    articles = await add_articles(pool, "strike")
    await summarize(pool, articles, 80)
    await assign(pool, settings)
    assert await events(pool) == []  # nobody subscribed: nothing to deliver, ever
    hook = await _hook(pool)
    await summarize(pool, await add_articles(pool, "strike"), 70)
    await assign(pool, settings)
    assert len(await events(pool, hook)) == 1  # the story changed after subscribing
    assert await store.delete_webhook(pool, hook)
    assert await events(pool) == []


# --- the CLI -----------------------------------------------------------------------------------


def test_cli_add_list_deliveries_remove(database_url: str, state_dir: Path) -> None:
    runner = CliRunner()
    env = {
        "NEWSDESK_DATABASE_URL": database_url,
        "NEWSDESK_STATE_DIR": str(state_dir),
        "COLUMNS": "250",
    }

    def cli(*args: str, code: int = 0) -> str:
        result = runner.invoke(cli_app, list(args), env=env)
        assert result.exit_code == code, (args, result.output, result.exception)
        return result.output

    out = cli(
        "webhooks",
        "add",
        "https://hooks.example.com/n",
        "--min-importance",
        "70",
        "--topic",
        "politics",
        "--topic",
        "science",
        "--source",
        "Test Wire",
    )
    assert "added webhook #1" in out and "importance >= 70" in out and "whsec_" in out
    listing = cli("webhooks", "list")
    assert "hooks.example.com/n" in listing and "politics|science" in listing
    assert "whsec_" not in listing
    assert "0 events" in cli("webhooks", "deliveries", "1")
    refused = cli("webhooks", "add", "http://127.0.0.1:8621/h", code=2)
    assert "NEWSDESK_WEBHOOK_ALLOW_LOOPBACK" in refused
    allowed = dict(env, NEWSDESK_WEBHOOK_ALLOW_LOOPBACK="true")
    ok = runner.invoke(cli_app, ["webhooks", "add", "http://127.0.0.1:8621/h"], env=allowed)
    assert ok.exit_code == 0 and "added webhook #2" in ok.output, ok.output
    assert "removed webhook #1" in cli("webhooks", "remove", "1")
    assert "no webhook 1" in cli("webhooks", "remove", "1", code=1)
    assert "no webhook 1" in cli("webhooks", "deliveries", "1", code=1)
