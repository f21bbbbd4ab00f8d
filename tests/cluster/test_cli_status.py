"""The offline stack's sample feeds (the `newsdesk up` component) and `newsdesk status` (a real
process against real PostgreSQL and a real HTTP server running the API app)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from cluster.components import Stack
from cluster.sample_data import SAMPLE_SOURCES, SampleFeedsComponent
from cluster.settings import Settings
from cluster.stack import DatabaseComponent
from serving.deployments.local import LocalBackend, local_app
from serving.summaries.result_store import ResultStore
from tests.support.serve import app_server, make_result, sample_article, store_articles
from train.corpus import ensure_lee_corpus


def _with_corpus(settings: Settings, engine_settings: Settings) -> Settings:
    """The test's state dir with the Lee corpus in it (fetched once per session)."""
    corpus = ensure_lee_corpus(engine_settings.state_dir)
    (settings.state_dir / "sample-data").mkdir(exist_ok=True)
    shutil.copy(corpus, settings.state_dir / "sample-data" / corpus.name)
    return settings


def test_sample_feeds_component_subscribes_once(
    settings: Settings, engine_settings: Settings
) -> None:
    s = _with_corpus(settings, engine_settings)
    part = SampleFeedsComponent()
    with Stack(s, [DatabaseComponent(), part]) as stack:
        text = dict(stack.describe())["sample feeds"]
    assert "4 sample feeds" in text and "4 new" in text

    async def feeds() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(s.database_url)
        try:
            return await conn.fetch("SELECT url, title FROM feeds ORDER BY id")
        finally:
            await conn.close()

    rows = asyncio.run(feeds())
    assert [r["title"] for r in rows] == [name for _, name in SAMPLE_SOURCES]
    for r in rows:
        assert r["url"].startswith("file://") and Path(r["url"][7:]).is_file()
    again = SampleFeedsComponent()
    with Stack(s, [DatabaseComponent(), again]) as stack:
        assert "0 new, 4 already subscribed" in dict(stack.describe())["sample feeds"]
    off = SampleFeedsComponent()
    with Stack(s.model_copy(update={"sample_feeds": False}), [DatabaseComponent(), off]) as stack:
        assert "off" in dict(stack.describe())["sample feeds"]


@pytest.fixture
def api_server(settings: Settings) -> Iterator[str]:
    """The API app (no model: only reads and stats) on a real HTTP server."""
    backend = LocalBackend(settings, _no_model)  # type: ignore[arg-type]
    with app_server(local_app(backend, settings)) as url:
        yield url


def _no_model() -> None:
    raise AssertionError("status must never load the model")


async def test_status_shows_feeds_backlog_throughput_and_cache(
    settings: Settings, pool: asyncpg.Pool, api_server: str
) -> None:
    now = datetime.now(UTC)
    stored = await store_articles(
        pool, [sample_article(i, published=now - timedelta(minutes=i)) for i in range(3)]
    )
    await ResultStore(pool).save(stored[0], make_result(stored[0], importance=50))
    await pool.execute("UPDATE feeds SET last_error = 'HTTP 500', status = 'quarantined'")
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSDESK_")}
    env.update(
        NEWSDESK_DATABASE_URL=settings.database_url or "",
        NEWSDESK_STATE_DIR=str(settings.state_dir),
        COLUMNS="200",
    )
    cmd = [str(Path(sys.executable).parent / "newsdesk"), "status"]
    done = await asyncio.to_thread(
        subprocess.run,
        [*cmd, "--json", "--api", api_server],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["feeds"] == {"quarantined": 1}
    assert data["failing_feeds"][0]["last_error"] == "HTTP 500"
    assert data["articles"] == 3 and data["backlog"] == 2
    assert data["summarized_1h"] == 1 and data["summarized_24h"] == 1
    assert data["story_backlog"] == 3  # the assigner has not run: nothing grouped yet
    assert data["api"]["url"] == api_server and "cache_lookups" in data["api"]
    assert "error" not in data["api"]

    table = await asyncio.to_thread(
        subprocess.run,
        [*cmd, "--api", "http://127.0.0.1:9"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert table.returncode == 0, table.stderr
    assert "2 articles waiting for a summary" in table.stdout
    assert "1 quarantined" in table.stdout
    assert "not answering" in table.stdout  # no app there: said, not a crash
