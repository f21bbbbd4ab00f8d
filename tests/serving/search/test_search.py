"""Search (``GET /v1/search``): real PostgreSQL with articles stored as ingestion stores them
and Results saved as the loop saves them (no model), read through the real API app over the
in-process backend. Ranking (each factor's effect), web-search syntax, filters, paging,
422s, highlighting, unsummarized articles, the time limit. The page's search box:
tests/serving/web/test_search_box.py."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from cluster.settings import Settings
from core.article import Article
from serving.deployments.local import LocalBackend, local_app
from serving.deployments.summarizer import Summarizer
from serving.search.schemas import SearchQuery
from serving.search.store import Search, SearchTooBroad, marked_snippet, search
from serving.summaries.result_store import ResultStore
from tests.support.serve import make_result, store_articles

NOW = datetime.now(UTC)


def _no_model() -> Summarizer:
    pytest.fail("a search must not reach the model")


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    backend = LocalBackend(settings, _no_model)
    await backend.startup()
    transport = httpx.ASGITransport(app=local_app(backend))
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as c:
        c.store = ResultStore(await backend.database())  # type: ignore[attr-defined]
        yield c
    await backend.shutdown()


def art(title: str, text: str, *, hours_ago: float = 1.0, source: str = "Test Wire") -> Article:
    return Article(
        title=title, text=text, source=source, published=NOW - timedelta(hours=hours_ago)
    )


async def put(
    client: httpx.AsyncClient,
    articles: list[Article],
    summaries: list[tuple[str, float, list[str]] | None],
    *,
    feed: str = "https://example.test/feed.xml",
) -> list[int]:
    """Store ``articles`` in one feed and, where given, a Result (summary, importance,
    topics) for each; returns their ids in order."""
    store: ResultStore = client.store  # type: ignore[attr-defined]
    stored = await store_articles(store.pool, articles, feed_url=feed)
    for article, summary in zip(stored, summaries, strict=True):
        if summary is not None:
            text, importance, topics = summary
            result = make_result(article, importance=importance, topics=topics)
            await store.save(article, result.model_copy(update={"summary": text}))
    return [a.id for a in stored]  # type: ignore[misc]


async def find(client: httpx.AsyncClient, **params: Any) -> dict[str, Any]:
    response = await client.get("/v1/search", params=params)
    assert response.status_code == 200, response.text
    return response.json()


def ids(body: dict[str, Any]) -> list[int]:
    return [h["id"] for h in body["hits"]]


# --- ranking ---------------------------------------------------------------------------------


async def test_more_relevant_ranks_first_other_things_equal(client: httpx.AsyncClient) -> None:
    central, passing = await put(
        client,
        [
            art(
                "Wildfire spreads across the valley",
                "The wildfire burned 900 homes; wildfire crews fought the wildfire all night.",
                hours_ago=5,
            ),
            art(
                "Council meets on budget",
                "The council discussed roads. A wildfire drill "
                "was mentioned at the end of the long meeting about taxes.",
                hours_ago=5,
            ),
        ],
        [("A valley wildfire burned homes.", 50, []), ("The council met.", 50, [])],
    )
    body = await find(client, q="wildfire")
    assert ids(body) == [central, passing]
    top, low = body["hits"]
    assert top["score_parts"]["relevance"] > low["score_parts"]["relevance"]
    assert top["score_parts"]["importance_factor"] == low["score_parts"]["importance_factor"]
    for hit in body["hits"]:
        p = hit["score_parts"]
        product = p["relevance"] * p["recency_factor"] * p["importance_factor"]
        assert hit["score"] == pytest.approx(product, rel=1e-4)


async def test_more_recent_ranks_first_other_things_equal(client: httpx.AsyncClient) -> None:
    old, new = await put(
        client,
        [
            art(
                "Harbour strike enters day two", "Dock workers at the harbour strike.", hours_ago=72
            ),
            art(
                "Harbour strike enters day three",
                "Dock workers at the harbour strike.",
                hours_ago=2,
            ),
        ],
        [("Dock workers strike.", 60, []), ("Dock workers strike.", 60, [])],
    )
    body = await find(client, q="harbour strike")
    assert ids(body) == [new, old]
    first, second = (h["score_parts"] for h in body["hits"])
    assert first["relevance"] == pytest.approx(second["relevance"])
    assert first["recency_factor"] > second["recency_factor"]
    # half-life 24 h: 72 h old keeps 0.5 + 0.5 * 0.125 of its weight, never less than half
    assert second["recency_factor"] == pytest.approx(0.5 + 0.5 * 0.5 ** (72 / 24), abs=1e-3)
    assert second["half_life_h"] == 24


async def test_more_important_ranks_first_other_things_equal(client: httpx.AsyncClient) -> None:
    minor, major = await put(
        client,
        [
            art(
                "Bridge closure announced for Monday", "The bridge closes for repairs.", hours_ago=3
            ),
            art(
                "Bridge closure announced for Tuesday",
                "The bridge closes for repairs.",
                hours_ago=3,
            ),
        ],
        [("The bridge closes.", 10, []), ("The bridge closes.", 90, [])],
    )
    body = await find(client, q="bridge closure")
    assert ids(body) == [major, minor]
    first, second = (h["score_parts"] for h in body["hits"])
    assert first["relevance"] == pytest.approx(second["relevance"])
    assert first["importance_factor"] == pytest.approx(0.95)
    assert second["importance_factor"] == pytest.approx(0.55)


async def test_relevance_leads_recency_and_importance(client: httpx.AsyncClient) -> None:
    """A month-old article about the query beats this morning's passing mention."""
    about, mention = await put(
        client,
        [
            art(
                "Vaccine trial results published",
                "The vaccine trial found the vaccine "
                "prevented 90% of cases; vaccine makers will apply for approval.",
                hours_ago=720,
            ),
            art(
                "Weekend sports roundup",
                "Results from the league. One player said he got a "
                "vaccine last week before the match against the visitors.",
                hours_ago=1,
            ),
        ],
        [("A vaccine prevented 90% of cases.", 50, []), ("League results.", 50, [])],
    )
    assert ids(await find(client, q="vaccine")) == [about, mention]


# --- syntax ----------------------------------------------------------------------------------


async def test_websearch_phrase_or_and_exclusion(client: httpx.AsyncClient) -> None:
    phrase, apart, flood, other = await put(
        client,
        [
            art("Storm hits the coastal city", "Winds reached the coastal city at dawn."),
            art("City council and coastal plans", "The city debated a plan for the coastal road."),
            art("Flood warning in the north", "Rivers rose after a week of rain."),
            art("Market report", "Shares rose on Friday."),
        ],
        [None, None, None, None],
    )
    assert ids(await find(client, q='"coastal city"')) == [phrase]
    assert set(ids(await find(client, q="coastal city"))) == {phrase, apart}
    assert set(ids(await find(client, q="storm OR flood"))) == {phrase, flood}
    assert ids(await find(client, q="coastal -storm")) == [apart]
    assert other not in ids(await find(client, q="city OR flood OR coastal"))


async def test_stemming_and_accents(client: httpx.AsyncClient) -> None:
    (quake,) = await put(
        client,
        [art("Earthquakes shake Zürich", "Two earthquakes were felt across the canton.")],
        [None],
    )
    assert ids(await find(client, q="earthquake")) == [quake]
    assert ids(await find(client, q="zurich")) == [quake]
    assert ids(await find(client, q="ZÜRICH shaking")) == [quake]


async def test_stop_words_only_is_an_empty_result_with_a_note(client: httpx.AsyncClient) -> None:
    await put(client, [art("The end of the line", "It was the last one of them.")], [None])
    body = await find(client, q="the of and")
    assert body["hits"] == [] and body["total"] == 0
    assert "stop words" in body["note"]
    assert (await find(client, q="line"))["note"] is None


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({}, "q"),
        ({"q": ""}, "q"),
        ({"q": "   "}, "q"),
        ({"q": "x" * 501}, "q"),
        ({"q": "a\x00b"}, "q"),
        ({"q": "a", "limit": "0"}, "limit"),
        ({"q": "a", "limit": "201"}, "limit"),
        ({"q": "a", "offset": "-1"}, "offset"),
        ({"q": "a", "offset": "10001"}, "offset"),
        ({"q": "a", "min_importance": "101"}, "min_importance"),
        ({"q": "a", "since": "yesterday"}, "since"),
        ({"q": "a", "colour": "red"}, "colour"),
    ],
)
async def test_bad_queries_are_422_naming_the_field(
    client: httpx.AsyncClient, params: dict[str, str], field: str
) -> None:
    response = await client.get("/v1/search", params=params)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    assert f"query.{field}" in error["message"]


async def test_openapi_documents_search(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    op = spec["paths"]["/v1/search"]["get"]
    params = {p["name"]: p for p in op["parameters"]}
    assert params["q"]["required"] is True
    assert {"since", "min_importance", "topic", "source", "limit", "offset"} <= set(params)
    assert "security" not in op  # public, like /v1/articles
    assert {"200", "422"} <= set(op["responses"])
    assert "score_parts" in spec["components"]["schemas"]["SearchHit"]["properties"]


# --- filters and paging ----------------------------------------------------------------------


async def test_filters(client: httpx.AsyncClient) -> None:
    old, big, small, pending = await put(
        client,
        [
            art("Election result contested", "The election count was challenged.", hours_ago=200),
            art("Election turnout record", "The election drew a record turnout.", hours_ago=2),
            art("Election posters removed", "Posters from the election came down.", hours_ago=3),
            art("Election debate tonight", "Candidates meet before the election.", hours_ago=4),
        ],
        [
            ("The count was challenged.", 70, ["politics"]),
            ("Record turnout.", 80, ["Politics", "society"]),
            ("Posters removed.", 20, ["local"]),
            None,
        ],
    )
    (elsewhere,) = await put(
        client,
        [art("Election night coverage", "Live election results.", source="Other Post")],
        [("Live results.", 50, ["politics"])],
        feed="https://other.test/feed.xml",
    )
    assert set(ids(await find(client, q="election"))) == {old, big, small, pending, elsewhere}
    since = (NOW - timedelta(hours=24)).isoformat()
    assert set(ids(await find(client, q="election", since=since))) == {
        big,
        small,
        pending,
        elsewhere,
    }
    # min_importance and topic need a summary: the pending article drops out
    assert set(ids(await find(client, q="election", min_importance=60))) == {old, big}
    assert set(ids(await find(client, q="election", topic="POLITICS"))) == {old, big, elsewhere}
    assert ids(await find(client, q="election", source="other post")) == [elsewhere]
    assert ids(await find(client, q="election", source="Test Wire", topic="local")) == [small]


async def test_paging_with_offset(client: httpx.AsyncClient) -> None:
    await put(
        client,
        [
            art(f"Rail update number {i}", "Trains run late on the rail line.", hours_ago=i + 1)
            for i in range(7)
        ],
        [("Trains run late.", 50, [])] * 7,
    )
    everything = await find(client, q="rail", limit=50)
    assert everything["total"] == 7 and everything["next_offset"] is None
    pages, offset = [], 0
    while offset is not None:
        body = await find(client, q="rail", limit=3, offset=offset)
        assert body["total"] == 7 and body["offset"] == offset
        pages.append(ids(body))
        offset = body["next_offset"]
    assert [len(p) for p in pages] == [3, 3, 1]
    assert [i for p in pages for i in p] == ids(everything)  # same order, no gaps or repeats
    past = await find(client, q="rail", limit=3, offset=30)
    assert past["hits"] == [] and past["total"] == 7 and past["next_offset"] is None


async def test_a_search_past_its_time_limit_is_cancelled(pool: asyncpg.Pool) -> None:
    feed = await pool.fetchval("INSERT INTO feeds (url) VALUES ('https://t.test/f') RETURNING id")
    await pool.execute(
        """
        INSERT INTO articles (feed_id, dedup_key, title, text, content_hash, published_at)
        SELECT $1, 'k' || i, 'Report ' || i, repeat('The council report on water prices. ', 40),
               md5(i::text), now() - make_interval(mins => i)
        FROM generate_series(1, 3000) i
        """,
        feed,
    )
    request = Search(SearchQuery(q="council report"), timeout_s=0.001)
    with pytest.raises(SearchTooBroad, match="add words, a since date or a filter"):
        await search(pool, request)
    # cancelled in PostgreSQL, the pool's connections still serve
    done = await search(pool, Search(SearchQuery(q="council report", limit=5)))
    assert done.total == 3000 and done.count == 5


# --- hits: summaries, snippets, copies ------------------------------------------------------


async def test_unsummarized_article_is_found_by_its_content(client: httpx.AsyncClient) -> None:
    (pending,) = await put(
        client,
        [art("Morning briefing", "Engineers found a crack in the reservoir dam on Sunday.")],
        [None],
    )
    (hit,) = (await find(client, q="reservoir dam"))["hits"]
    assert hit["id"] == pending
    assert hit["summary"] is None and hit["importance"] is None and hit["topics"] == []
    assert hit["snippet_from"] == "text"
    assert hit["score_parts"]["importance_factor"] == pytest.approx(0.75)
    marked = [hit["snippet"][s:e] for s, e in hit["highlights"]]
    assert marked == ["reservoir", "dam"]


async def test_a_hit_by_its_summary_highlights_the_summary(client: httpx.AsyncClient) -> None:
    (aid,) = await put(
        client,
        [art("Minister resigns", "The minister stepped down on Friday after the audit.")],
        [
            (
                "The finance minister resigned after an audit of travel & expenses (< 5% of pay).",
                75,
                ["politics"],
            )
        ],
    )
    (hit,) = (await find(client, q="expenses audit"))["hits"]  # 'expenses' only in the summary
    assert hit["id"] == aid and hit["snippet_from"] == "summary"
    assert hit["summary"].startswith("The finance minister") and hit["importance"] == 75
    assert hit["topics"] == ["politics"] and hit["source"] == "Test Wire"
    assert hit["title"] == "Minister resigns" and hit["link"] == f"/v1/articles/{aid}"
    assert [hit["snippet"][s:e] for s, e in hit["highlights"]] == ["audit", "expenses"]
    # the feed's text is never markup: escaped, only our <mark> around matched words
    assert "travel &amp; <mark>expenses</mark> (&lt; 5%" in hit["snippet_html"]
    assert re.sub(r"</?mark>", "", hit["snippet_html"]).count("<") == 0


async def test_only_the_latest_summary_and_no_copies(client: httpx.AsyncClient) -> None:
    store: ResultStore = client.store  # type: ignore[attr-defined]
    (original,) = await put(client, [art("Gallery reopens", "The gallery reopened today.")], [None])
    copy_ids = await put(
        client,
        [art("Gallery reopens", "The gallery reopened today.")],
        [None],
        feed="https://copies.test/feed.xml",
    )
    assert ids(await find(client, q="gallery")) == [original]  # the copy is left out
    stored = await store.get_article(original)
    assert stored is not None
    article = stored.article
    first = make_result(article, importance=40, model_id="m-old")
    await store.save(article, first.model_copy(update={"summary": "Sculptures return."}))
    assert ids(await find(client, q="sculptures")) == [original]
    await store.pool.execute("UPDATE results SET updated_at = now() - interval '1 day'")
    second = make_result(article, importance=40, model_id="m-new")
    await store.save(article, second.model_copy(update={"summary": "Paintings return."}))
    assert ids(await find(client, q="paintings")) == [original]
    assert ids(await find(client, q="sculptures")) == []  # an older version's words
    assert copy_ids[0] != original


def test_marked_snippet_offsets_and_escaping() -> None:
    plain, spans, markup = marked_snippet("a \ue000b&c\ue001 <d> \ue000e\ue001")
    assert plain == "a b&c <d> e"
    assert [plain[s:e] for s, e in spans] == ["b&c", "e"]
    assert markup == "a <mark>b&amp;c</mark> &lt;d&gt; <mark>e</mark>"
