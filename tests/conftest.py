"""Shared fixtures: a real PostgreSQL per test, settings built for the test (never os.environ).

PostgreSQL: ``NEWSDESK_TEST_DATABASE_URL`` if set, else the local server on 127.0.0.1:5432
when it answers, else an embedded server started once for the session. Each test gets a
fresh database of its own, dropped afterwards, so tests (and parallel runs) never share state.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from cluster.settings import Settings
from core import db
from tests.support.feedserver import FeedServer

# every test is one tier: unit, local or system (make test-fast runs the unit tier)
pytest_plugins = ["tests.support.tiers"]

LOCAL_PG = "postgresql://postgres@127.0.0.1:5432/postgres"


async def _answers(dsn: str) -> bool:
    try:
        conn = await asyncpg.connect(dsn, timeout=3)
    except (TimeoutError, OSError, asyncpg.PostgresError):
        return False
    await conn.close()
    return True


@pytest.fixture(scope="session")
def pg_server_dsn(tmp_path_factory: pytest.TempPathFactory) -> str:
    """DSN of a PostgreSQL server (its maintenance database) the tests may create DBs on."""
    configured = os.environ.get("NEWSDESK_TEST_DATABASE_URL")
    if configured:
        return configured
    if asyncio.run(_answers(LOCAL_PG)):
        return LOCAL_PG
    return db.start_embedded_postgres(tmp_path_factory.mktemp("embedded-pg"))


@pytest.fixture
async def database_url(pg_server_dsn: str) -> AsyncIterator[str]:
    """A fresh, empty database for one test."""
    name = f"nd_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(pg_server_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    yield db.with_database(pg_server_dsn, name)
    admin = await asyncpg.connect(pg_server_dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    path = tmp_path / "state"
    path.mkdir()
    return path


@pytest.fixture
def settings(database_url: str, state_dir: Path) -> Settings:
    """Settings for a test: its own database and state dir; loopback feeds allowed."""
    return Settings(
        database_url=database_url,
        state_dir=state_dir,
        allow_loopback=True,
        redis_url=None,
        fetch_timeout_s=5,
        backoff_base_s=1,
    )


@pytest.fixture
async def pool(settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    pool = await db.create_pool(settings)
    yield pool
    await pool.close()


@pytest.fixture(scope="session")
def shared_state_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A state dir shared by a session's tests (converted models are costly to redo)."""
    yield tmp_path_factory.mktemp("shared-state")


@pytest.fixture
def feed_server() -> Iterator[FeedServer]:
    """A local HTTP server serving what the test programs (``tests/support/feedserver.py``)."""
    server = FeedServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """One local Ray for the session (``ray.init`` picks free ports: never Redis's 6379)."""
    import ray

    if ray.is_initialized():
        yield
        return
    # address="local": always a new instance, never a cluster someone started on this machine
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def engine_settings(shared_state_dir: Path) -> Settings:
    """Settings for the model engine. ``NEWSDESK_TEST_MODEL_STATE_DIR`` may name a state dir
    that already holds the converted default model (saves the ~50 s conversion locally)."""
    state = os.environ.get("NEWSDESK_TEST_MODEL_STATE_DIR")
    return Settings(state_dir=Path(state) if state else shared_state_dir, redis_url=None)


@pytest.fixture(scope="session")
def prepared_model_dir(engine_settings: Settings) -> Path:
    """The default profile's converted transformers folder (converted once per session)."""
    from serving.engine.model_source import prepare_model
    from serving.model.profiles import load_profile

    return prepare_model(load_profile("cpu-small"), engine_settings)


@pytest.fixture(scope="session")
def tokenizer(prepared_model_dir: Path):  # type: ignore[no-untyped-def]
    """The default model's tokenizer, left-padded as the engine loads it (the converted folder
    saves that side too; named here so no test depends on it)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(prepared_model_dir, padding_side="left")


@pytest.fixture(scope="session")
def engine(prepared_model_dir: Path, engine_settings: Settings):  # type: ignore[no-untyped-def]
    """One loaded SummarizeEngine (cpu-small) for the session. Tests that change its adapter
    must set it back to None before they return."""
    from serving.engine import SummarizeEngine

    return SummarizeEngine.load("cpu-small", engine_settings)


@pytest.fixture
def summarizer(engine, settings: Settings):  # type: ignore[no-untyped-def]
    """A Summarizer (plain Python, no Ray) on the session engine, in a replica context."""
    from serving.deployments.local import replica_context
    from serving.deployments.summarizer import Summarizer

    with replica_context():
        summarizer = Summarizer("cpu-small", settings, engine=engine)
        yield summarizer
        summarizer.close()
    engine.set_adapter(None)  # the session engine is shared: leave it as found


@pytest.fixture
async def api(summarizer, settings: Settings):  # type: ignore[no-untyped-def]
    """An HTTP client on the in-process API (LocalBackend) over ``summarizer``."""
    import httpx

    from serving.deployments.local import LocalBackend, local_app

    backend = LocalBackend(settings, summarizer)
    await backend.startup()
    transport = httpx.ASGITransport(app=local_app(backend))
    async with httpx.AsyncClient(transport=transport, base_url="http://api", timeout=600) as c:
        yield c
    await backend.shutdown()
