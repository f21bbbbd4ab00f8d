"""The digest page in a real browser (headless Chromium from Debian's packages, driven by
selenium) against a running stack: sample feeds built from real ABC articles, ingested by the
real poller over file:// URLs into real PostgreSQL, the Serve application on a test Ray with
the summarization loop summarizing them with the real engine and grouping them into stories.
Checks the ranked order the page shows, that filters change it, and saves a screenshot."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from cluster.local_cluster import free_port
from cluster.sample_data import SAMPLE_SOURCES, build_sample_feeds
from cluster.settings import Settings
from core import db
from ingestion.feedlist import FeedSpec, add_feeds
from ingestion.poll_loop import Poller
from serving.deployments.builder import AppArgs, SummarizerOptions, compose
from serving.deployments.summarizer import SummarizerConfig
from tests.support.serve import write_test_profile
from train.corpus import ensure_lee_corpus

pytestmark = pytest.mark.system

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
APP = "newsdesk-digest-test"
N_ARTICLES = 6  # Lee articles; with the outlets' copies: 9 stored articles, 6 stories


@pytest.fixture
def stack_url(
    ray_session: None,
    settings: Settings,
    engine_settings: Settings,
    prepared_model_dir: Path,
    tmp_path: Path,
) -> Iterator[tuple[str, int]]:
    """(base URL, number of stored articles): the Serve app (Ingress, CacheLookup, Summarizer,
    loop + story assigner) on the test's database, over articles ingested from sample feeds."""
    from ray import serve

    corpus = ensure_lee_corpus(engine_settings.state_dir)
    (settings.state_dir / "sample-data").mkdir(exist_ok=True)
    shutil.copy(corpus, settings.state_dir / "sample-data" / corpus.name)
    paths = build_sample_feeds(settings.state_dir, limit=N_ARTICLES)

    async def ingest() -> int:
        pool = await db.create_pool(settings)
        try:
            specs = [
                FeedSpec(url=p.as_uri(), title=name)
                for p, (_, name) in zip(paths, SAMPLE_SOURCES, strict=True)
            ]
            await add_feeds(pool, specs, settings)
            poller = Poller(settings, pool=pool)
            summary = await poller.poll_once()
            await poller.close()
            assert summary.feeds_ok == len(paths)
            return int(await pool.fetchval("SELECT count(*) FROM articles"))
        finally:
            await pool.close()

    stored = asyncio.run(ingest())
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    app_settings = Settings(
        **{
            **settings.model_dump(),
            "state_dir": engine_settings.state_dir,  # the converted model is there
            "engine_threads": 2,
            "summarize_loop_interval_s": 1.0,
            "story_assign_interval_s": 1.0,
        }
    )
    args = AppArgs(
        profile=str(write_test_profile(tmp_path, max_new_tokens=32)),
        summarizer=SummarizerOptions(
            user_config=SummarizerConfig(max_batch_size=8, batch_wait_timeout_s=0.5)
        ),
        summarize_loop=True,
    )
    serve.run(compose(args, app_settings), name=APP, route_prefix="/")
    try:
        yield f"http://127.0.0.1:{port}", stored
    finally:
        serve.delete(APP)
        serve.shutdown()


def _wait_for_stories(base: str, expected_articles: int, timeout_s: float = 420) -> dict:
    """/v1/stories once every stored article is summarized and in a story."""
    deadline = time.monotonic() + timeout_s
    body: dict = {}
    with httpx.Client(base_url=base, timeout=30) as client:
        while time.monotonic() < deadline:
            response = client.get("/v1/stories")
            if response.status_code == 200:
                body = response.json()
                articles = [a for s in body["stories"] for a in s["articles"]]
                if len(articles) == expected_articles and all(a["summary"] for a in articles):
                    return body
            time.sleep(2)
    raise AssertionError(f"stories not ready in {timeout_s}s: {body}")


def _browser(tmp_path: Path):  # type: ignore[no-untyped-def]
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1280,1700",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=str(CHROMEDRIVER), log_output=str(tmp_path / "driver.log"))
    return webdriver.Chrome(options=options, service=service)


_READ_STORIES = """
return [...document.querySelectorAll('#stories > li.story')].map((li) => ({
  id: Number(li.dataset.storyId),
  rank: Number(li.dataset.rank),
  importance: Number(li.dataset.importance),
  score: Number(li.dataset.score),
  sources: li.dataset.sources.split('|'),
  why: li.querySelector('.story-why').textContent,
  title: li.querySelector('.story-title').textContent,
  summary: li.querySelector('.story-summary').textContent,
}));
"""


def _shown(driver) -> list[dict]:  # type: ignore[no-untyped-def]
    """The stories as the page shows them, read in one script (the list may re-render)."""
    return driver.execute_script(_READ_STORIES)


@pytest.mark.skipif(
    not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
    reason="chromium and chromium-driver are not installed (`make browser` installs them)",
)
def test_digest_page_ranks_filters_and_refreshes(
    stack_url: tuple[str, int], tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.select import Select
    from selenium.webdriver.support.ui import WebDriverWait

    base, stored = stack_url
    api = _wait_for_stories(base, expected_articles=stored)
    expected = [s["id"] for s in api["stories"]]
    assert len(expected) >= 3
    assert any(s["n_sources"] >= 2 for s in api["stories"]), "copies grouped across outlets"

    driver = _browser(tmp_path)
    try:
        wait = WebDriverWait(driver, 30)
        driver.get(base + "/")
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#stories > li.story")))
        wait.until(lambda d: "updated" in d.find_element(By.ID, "status").text)
        shown = _shown(driver)
        # the ranked order of the API, best first, numbered 1..n, each saying why
        assert [s["id"] for s in shown] == expected
        assert [s["rank"] for s in shown] == list(range(1, len(shown) + 1))
        assert [s["score"] for s in shown] == sorted((s["score"] for s in shown), reverse=True)
        for s, a in zip(shown, api["stories"], strict=True):
            assert s["why"] == f"Why here: {a['why']}"
            assert s["title"] == a["title"] and s["summary"] == a["summary"]
        multi = next(s for s in shown if len(s["sources"]) >= 2)
        assert f"{len(multi['sources'])} sources" in multi["why"]
        screenshot = tmp_path / "digest.png"
        driver.save_screenshot(str(screenshot))
        print(f"\ndigest page screenshot: {screenshot}")

        # a minimum importance between the shown ones hides the lower ones, without a reload
        driver.execute_script("window.__sameDocument = true")
        importances = sorted({s["importance"] for s in shown})
        cut = (importances[0] + importances[-1]) / 2
        slider = driver.find_element(By.ID, "min-importance")
        driver.execute_script(
            "arguments[0].value = arguments[1];"
            "arguments[0].dispatchEvent(new Event('input', {bubbles: true}));",
            slider,
            str(int(cut)),
        )
        wait.until(lambda d: len(_shown(d)) < len(shown))
        kept = _shown(driver)
        assert kept and all(s["importance"] >= int(cut) for s in kept)
        assert [s["id"] for s in kept] == [s["id"] for s in shown if s["importance"] >= int(cut)]
        assert f"min_importance={int(cut)}" in driver.current_url
        assert driver.execute_script("return window.__sameDocument === true")

        # a source filter: only stories that outlet covered
        driver.find_element(By.ID, "clear").click()
        wait.until(lambda d: len(_shown(d)) == len(shown))
        source = multi["sources"][-1]
        Select(driver.find_element(By.ID, "source")).select_by_value(source)
        wait.until(lambda d: all(source in s["sources"] for s in _shown(d)))
        by_source = _shown(driver)
        assert by_source and len(by_source) < len(shown)
        assert multi["id"] in [s["id"] for s in by_source]
        driver.save_screenshot(str(tmp_path / "digest-filtered.png"))
        print(f"filtered screenshot: {tmp_path / 'digest-filtered.png'}")

        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors
    finally:
        driver.quit()
    assert datetime.fromisoformat(api["generated_at"]) <= datetime.now(UTC)
