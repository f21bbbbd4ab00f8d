"""The digest page's search box: the page's HTML has it, labelled and wired to /v1/search
(checked on the served page), and the page's real scripts behave (run under Node over the
real HTML by tests/support/search_page_check.js: a small DOM of its own, canned API replies)."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from serving.http.app import build_api
from serving.http.config import ApiConfig
from serving.web import WEB_DIR


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    """The API app without a backend: the page and its assets need none."""
    app = build_api(None, ApiConfig())  # type: ignore[arg-type]
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://api"
    ) as c:
        yield c


async def test_page_has_a_search_box_wired_to_the_api(client: httpx.AsyncClient) -> None:
    page = (await client.get("/")).text
    form = re.search(r'<form[^>]*id="search"[^>]*>(.*?)</form>', page, re.S)
    assert form is not None, "no search form on the page"
    assert 'role="search"' in form.group(0)
    box = re.search(r'<input[^>]*id="q"[^>]*>', form.group(1))
    assert box is not None and 'type="search"' in box.group(0) and 'name="q"' in box.group(0)
    assert re.search(r'<label[^>]*for="q"', form.group(1)), "the box has no label"
    assert re.search(r"<button[^>]*type=\"submit\"", form.group(1)), "no submit button"
    assert 'id="search-results"' in page and 'aria-live="polite"' in page
    script = re.search(r'<script src="(/web/search\.js)"', page)
    assert script is not None
    js = (await client.get(script.group(1))).text
    assert "/v1/search?" in js
    assert 'get("q")' in js and 'set("q"' in js  # the query lives in the URL (?q=)
    # hits go in as text nodes and <mark> elements only, never as markup
    assert not re.search(r"\.(inner|outer)HTML\s*=|insertAdjacentHTML|document\.write", js)
    assert "highlights" in js
    assert "http://" not in js and "https://" not in js  # no CDN, same-origin only
    assert (WEB_DIR / "static" / "search.js").read_text(encoding="utf-8") == js


def test_search_box_behaviour_in_node() -> None:
    """The page's real scripts over its real HTML under Node (tests/support/search_page_check.js: a
    small DOM of its own and canned API replies): URL, calls, rendering, paging, errors."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    check = Path(__file__).resolve().parents[2] / "support" / "search_page_check.js"
    done = subprocess.run(
        [node, str(check), str(WEB_DIR)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "all checks passed" in done.stdout
