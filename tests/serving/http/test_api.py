"""The HTTP API without Ray or the model: validation, errors, API key, OpenAPI, article reads.

The real Starlette app (``serving.http.app``) over the in-process backend and a real PostgreSQL
database; the model is never reached by these requests (its loader fails the test if it is).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from cluster.settings import Settings
from serving.deployments.local import LocalBackend, local_app
from serving.deployments.summarizer import Summarizer
from serving.model.versions import Versions
from serving.summaries.result_store import ResultStore
from tests.support.serve import make_result, sample_article, store_articles

KEY = "s3cret-key"
AUTH = {"X-API-Key": KEY}


def _no_model() -> Summarizer:
    pytest.fail("this request must not reach the model")


@pytest.fixture
async def api_settings(settings: Settings) -> Settings:
    return Settings(
        **{
            **settings.model_dump(),
            "api_key": KEY,
            "api_max_body_bytes": 64 * 1024,
            "api_max_batch_articles": 4,
        }
    )


@pytest.fixture
async def client(api_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    backend = LocalBackend(api_settings, _no_model)
    await backend.startup()
    transport = httpx.ASGITransport(app=local_app(backend))
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as c:
        c.backend = backend  # type: ignore[attr-defined]
        yield c
    await backend.shutdown()


def _assert_error(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert error["code"] == code
    assert error["message"]
    assert error["request_id"] == response.headers["x-request-id"]
    return error


@pytest.mark.parametrize(
    ("body", "status", "code", "needle"),
    [
        (b"{not json", 400, "malformed_json", "not valid JSON"),
        (b"", 400, "malformed_json", "empty"),
        (b"\xff\xfe\x00garbage", 400, "malformed_json", "UTF-8"),
        (b"[1, 2]", 422, "validation_error", "JSON object"),
        (b'{"title": 5, "text": "x"}', 422, "validation_error", "title"),
        (b'{"title": "t", "text": "x", "colour": "red"}', 422, "validation_error", "colour"),
        (
            b'{"title": "t", "text": "x", "published": "yesterday"}',
            422,
            "validation_error",
            "published",
        ),
        (b'{"title": "' + b"x" * 1001 + b'", "text": "x"}', 422, "validation_error", "title"),
    ],
)
async def test_summarize_rejects_bad_bodies(
    client: httpx.AsyncClient, body: bytes, status: int, code: str, needle: str
) -> None:
    response = await client.post("/v1/summarize", content=body, headers=AUTH)
    error = _assert_error(response, status, code)
    assert needle in error["message"] or any(needle in str(d["loc"]) for d in error["details"])


async def test_validation_errors_name_every_field(client: httpx.AsyncClient) -> None:
    body = {"articles": [{"title": "ok", "text": "ok"}, {"title": 1, "text": ["no"]}]}
    error = _assert_error(
        await client.post("/v1/summarize/batch", json=body, headers=AUTH), 422, "validation_error"
    )
    locs = sorted(tuple(d["loc"]) for d in error["details"])
    assert locs == [("articles", 1, "text"), ("articles", 1, "title")]
    assert "and 1 more" in error["message"]


async def test_oversized_bodies_are_refused(client: httpx.AsyncClient) -> None:
    big = {"title": "t", "text": "x" * 70_000}
    _assert_error(await client.post("/v1/summarize", json=big, headers=AUTH), 413, "body_too_large")

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the limit is counted
        yield b'{"title": "t", "text": "'
        for _ in range(100):
            yield b"y" * 1024
        yield b'"}'

    response = await client.post("/v1/summarize", content=chunks(), headers=AUTH)
    _assert_error(response, 413, "body_too_large")


@pytest.mark.parametrize("route", ["/v1/summarize/batch", "/v1/summarize/stream"])
async def test_batch_size_limits(client: httpx.AsyncClient, route: str) -> None:
    five = {"articles": [{"title": f"t{i}", "text": "x"} for i in range(5)]}
    error = _assert_error(
        await client.post(route, json=five, headers=AUTH), 422, "too_many_articles"
    )
    assert "5 articles" in error["message"] and "limit is 4" in error["message"]
    _assert_error(
        await client.post(route, json={"articles": []}, headers=AUTH), 422, "validation_error"
    )
    _assert_error(
        await client.post(route, json={"items": []}, headers=AUTH), 422, "validation_error"
    )


async def test_api_key_guards_write_and_admin_routes(client: httpx.AsyncClient) -> None:
    for method, route in [
        ("POST", "/v1/summarize"),
        ("POST", "/v1/summarize/batch"),
        ("POST", "/v1/summarize/stream"),
        ("GET", "/v1/stats"),
    ]:
        _assert_error(await client.request(method, route, json={}), 401, "unauthorized")
        wrong = {"X-API-Key": "nope"}
        _assert_error(
            await client.request(method, route, json={}, headers=wrong), 401, "unauthorized"
        )
    stats = await client.get("/v1/stats", headers={"Authorization": f"Bearer {KEY}"})
    assert stats.status_code == 200
    assert stats.json()["api"]["requests"]["stats"]["401"] == 2
    # reads and probes stay open
    assert (await client.get("/healthz")).status_code == 200
    assert (await client.get("/v1/articles")).status_code == 200


async def test_unknown_routes_methods_and_ids(client: httpx.AsyncClient) -> None:
    _assert_error(await client.get("/v2/nothing"), 404, "not_found")
    error = _assert_error(await client.delete("/v1/articles"), 405, "method_not_allowed")
    assert "DELETE" in error["message"]
    _assert_error(await client.get("/v1/articles/123456"), 404, "not_found")
    for bad in ("abc", "0", "-3", "99999999999999999999"):
        _assert_error(await client.get(f"/v1/articles/{bad}"), 422, "validation_error")


@pytest.mark.parametrize(
    "query",
    [
        "limit=0",
        "limit=abc",
        "limit=201",
        "min_importance=101",
        "min_importance=x",
        "since=not-a-date",
        "topic=",
        "colour=red",
    ],
)
async def test_bad_list_queries(client: httpx.AsyncClient, query: str) -> None:
    error = _assert_error(await client.get(f"/v1/articles?{query}"), 422, "validation_error")
    assert error["details"][0]["loc"][0] == "query"


async def test_request_id_is_echoed_or_made(client: httpx.AsyncClient) -> None:
    given = await client.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert given.headers["x-request-id"] == "abc-123"
    made = await client.get("/healthz", headers={"X-Request-ID": "bad id with spaces"})
    assert len(made.headers["x-request-id"]) == 32


async def test_readyz_reports_each_check(client: httpx.AsyncClient) -> None:
    response = await client.get("/readyz")
    body = response.json()
    assert response.status_code == 503  # the model loads on the first summary
    assert body["ready"] is False
    assert body["checks"]["model"]["ok"] is False
    assert body["checks"]["database"] == {"ok": True, "detail": "in-process store"}
    assert body["info"]["redis"] == "disabled"


async def test_openapi_describes_every_route(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    assert spec["openapi"].startswith("3.")
    ops = {(m.upper(), p) for p, item in spec["paths"].items() for m in item}
    assert ops >= {
        ("POST", "/v1/summarize"),
        ("POST", "/v1/summarize/batch"),
        ("POST", "/v1/summarize/stream"),
        ("GET", "/v1/articles"),
        ("GET", "/v1/articles/{article_id}"),
        ("GET", "/v1/stats"),
        ("GET", "/healthz"),
        ("GET", "/readyz"),
        ("GET", "/v1/stories"),
    }
    schemas = spec["components"]["schemas"]
    for name in ("Article", "Result", "ArticleError", "ErrorResponse", "BatchRequest"):
        assert any(k.startswith(name) for k in schemas), name
    # every $ref points at a schema that exists
    text = str(spec)
    import re

    for ref in set(re.findall(r"#/components/schemas/([A-Za-z0-9_-]+)", text)):
        assert ref in schemas, ref
    params = {p["name"] for p in spec["paths"]["/v1/articles"]["get"]["parameters"]}
    assert params == {"since", "min_importance", "topic", "limit"}
    assert spec["paths"]["/v1/summarize"]["post"]["security"] == [{"ApiKey": []}]


async def test_articles_are_ranked_by_importance_and_recency(
    client: httpx.AsyncClient, api_settings: Settings
) -> None:
    store = await ResultStore.open(api_settings)
    now = datetime.now(UTC)
    try:
        stored = await store_articles(
            store.pool,
            [
                sample_article(0, published=now - timedelta(hours=48)),  # 90, two days old
                sample_article(1, published=now - timedelta(hours=1)),  # 10, fresh
                sample_article(2, published=now - timedelta(hours=2)),  # 60, fresh
                sample_article(3, published=now - timedelta(hours=3)),  # pending
            ],
        )
        # the same text as article 2 from another feed: a copy, listed once
        copy = (
            await store_articles(store.pool, [sample_article(2)], feed_url="https://other.test/rss")
        )[0]
        v = Versions("test-model", None, "test-v1")
        await store.save(stored[0], make_result(stored[0], importance=90, topics=["Disaster"]), v)
        await store.save(stored[1], make_result(stored[1], importance=10, topics=["food"]), v)
        await store.save(stored[2], make_result(stored[2], importance=60, topics=["politics"]), v)
        await store.save(copy, make_result(copy, importance=60, topics=["politics"]), v)

        listing = (await client.get("/v1/articles")).json()
        ids = [a["id"] for a in listing["articles"]]
        # 60 fresh (rank ~57) > 90 two days old (rank 22.5) > 10 fresh (rank ~9.7)
        assert ids == [stored[2].id, stored[0].id, stored[1].id]
        first = listing["articles"][0]
        assert first["summary"] == f"Summary of {stored[2].title}."
        assert first["rank"] == pytest.approx(60 * 0.5 ** (2 / 24), rel=0.01)
        assert "text" not in first

        async def ids_for(query: str | dict[str, str]) -> list[int]:
            response = await client.get("/v1/articles", params=query)
            assert response.status_code == 200, response.text
            return [a["id"] for a in response.json()["articles"]]

        assert await ids_for("min_importance=50") == [stored[2].id, stored[0].id]
        assert await ids_for("topic=disaster") == [stored[0].id]
        since = (now - timedelta(hours=5)).isoformat()
        assert await ids_for({"since": since}) == [stored[2].id, stored[1].id]
        # an unencoded '+' of the offset arrives as a space: still understood
        assert await ids_for(f"since={since}") == [stored[2].id, stored[1].id]
        assert await ids_for("limit=1") == [stored[2].id]

        detail = (await client.get(f"/v1/articles/{stored[0].id}")).json()
        assert detail["status"] == "summarized"
        assert detail["article"]["text"] == stored[0].text
        assert detail["result"]["importance"] == 90
        pending = (await client.get(f"/v1/articles/{stored[3].id}")).json()
        assert pending["status"] == "pending" and pending["result"] is None
    finally:
        await store.close()


async def test_an_unavailable_summarizer_is_503_504_or_an_error_in_place(
    api_settings: Settings,
) -> None:
    from serving.http.app import build_api
    from serving.http.config import ApiConfig
    from serving.model.result import SummarizerUnavailable

    class Down(LocalBackend):
        async def summarize(self, article):  # type: ignore[no-untyped-def]
            raise SummarizerUnavailable("replica lost twice: gone")

    backend = Down(api_settings, _no_model, use_store=False)
    await backend.startup()
    transport = httpx.ASGITransport(app=build_api(backend, ApiConfig.from_settings(api_settings)))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            one = await client.post("/v1/summarize", json={"title": "t", "text": "x"}, headers=AUTH)
            error = _assert_error(one, 503, "unavailable")
            assert error["message"] == "summarizer unavailable: replica lost twice: gone"
            assert one.headers["retry-after"] == "5"
            batch = await client.post(
                "/v1/summarize/batch",
                json={"articles": [{"title": "t", "text": "x"}]},
                headers=AUTH,
            )
            (outcome,) = batch.json()["results"]
            assert outcome["kind"] == "error" and outcome["code"] == "internal_error"
            assert outcome["message"] == error["message"]

        slow = ApiConfig.from_settings(api_settings)
        slow = ApiConfig(**{**slow.__dict__, "summarizer_timeout_s": 0.01})

        class Slow(LocalBackend):
            async def summarize(self, article):  # type: ignore[no-untyped-def]
                await asyncio.sleep(1)

        transport = httpx.ASGITransport(
            app=build_api(Slow(api_settings, _no_model, use_store=False), slow)
        )
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            late = await client.post(
                "/v1/summarize", json={"title": "t", "text": "x"}, headers=AUTH
            )
            assert _assert_error(late, 504, "timeout")["message"] == "no summary within 0.01 s"
    finally:
        await backend.shutdown()
