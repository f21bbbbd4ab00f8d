"""The verifier's outcome downstream: stored Results keep their report, ``/v1/stats`` counts the
last day's Results by method and verdict (real PostgreSQL), the Summarizer counts what it
served (real engine), and the digest page marks an extractive summary: the real ``digest.js``
renders the real ``/v1/stories`` payload (node, over a minimal DOM built from ``index.html``).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import asyncpg
import httpx
import numpy as np
import pytest

from cluster.settings import Settings
from core.article import Article
from serving.deployments.local import LocalBackend, local_app
from serving.deployments.summarizer import Summarizer
from serving.model.result import ArticleError, Result
from serving.model.verifier import Evidence, VerifierReport, check, verify
from serving.model.versions import Versions
from serving.stories.store import assign_articles
from serving.summaries import metrics
from serving.summaries.result_store import ResultStore
from tests.support.serve import make_result, sample_article, store_articles

WEB = Path(__file__).resolve().parents[3] / "serving" / "web"
FAITHFUL = (
    "A magnitude 7.1 earthquake struck the coastal city of Port Ellis on Tuesday, killing at "
    "least 40 people."
)
INVENTED = "A magnitude 7.1 earthquake struck Port Ellis, killing 95 people, Governor Smith said."


def _reports(article: Article) -> dict[str, VerifierReport]:
    """Real verifier reports on summaries of ``article`` (the earthquake sample)."""
    evidence = Evidence.of(article)
    _, passed = check(FAITHFUL, evidence)
    _, failed = check(INVENTED, evidence)
    lead = " ".join(article.text.split(". ")[:1]) + "."
    extract = verify(lead, evidence)
    extract.rejected = [f"first: {'; '.join(failed.reasons)}"]  # as the engine keeps them
    assert passed.verdict == "pass" and failed.verdict == "fail" and extract.verdict == "pass"
    return {"pass": passed, "fail": failed, "extract": extract}


def _with(result: Result, summary: str, method: str, report: VerifierReport | None) -> Result:
    return result.model_copy(update={"summary": summary, "method": method, "verification": report})


# --- the store and /v1/stats ------------------------------------------------------------------


async def test_rates_count_methods_and_verdicts(pool: asyncpg.Pool, settings: Settings) -> None:
    quake = sample_article(0)
    copies = [quake.model_copy(update={"text": f"{quake.text} Update {i}."}) for i in range(7)]
    articles = await store_articles(pool, copies)
    store = ResultStore(pool)
    reports = _reports(articles[0])
    lead = reports["extract"]
    plans = [
        ("abstractive", FAITHFUL, reports["pass"]),
        ("abstractive", FAITHFUL, reports["pass"]),
        ("abstractive", INVENTED, reports["fail"]),  # served in guard mode "report"
        ("extractive", articles[0].text.split(". ")[0] + ".", lead),
        ("abstractive", FAITHFUL, None),  # guard off: unverified
        ("abstractive", FAITHFUL, reports["pass"]),  # stored before the verifier (below)
        ("extractive", articles[0].text.split(". ")[0] + ".", lead),  # two days old (below)
    ]
    for article, (method, summary, report) in zip(articles, plans, strict=True):
        result = _with(make_result(article, importance=50), summary, method, report)
        assert await store.save(article, result) == "article"
    legacy, old = articles[5].id, articles[6].id
    await pool.execute(
        "UPDATE results SET result = result - 'method' - 'verification' WHERE article_id = $1",
        legacy,
    )
    await pool.execute(
        "UPDATE results SET created_at = now() - interval '2 days' WHERE article_id = $1", old
    )
    (other,) = await store_articles(pool, [sample_article(1)], feed_url="https://o.test/rss")
    error = ArticleError(
        article_id=other.id, content_hash=other.content_hash, code="internal_error", message="x"
    )
    assert await store.save(other, error, Versions("test-model", None, "test-v1")) == "article"

    rates = await store.rates()
    assert rates["summarized_24h"] == 6 and rates["failed_24h"] == 1  # errors count apart
    assert rates["methods_24h"] == {"abstractive": 5, "extractive": 1}
    assert rates["verdicts_24h"] == {"pass": 3, "fail": 1, "unverified": 2}
    assert rates["abstractive_share_24h"] == pytest.approx(5 / 6, abs=1e-4)

    # the store keeps each report whole; a Result from before the verifier reads as the model's
    stored = await store.get_article(articles[3].id)
    assert stored is not None and stored.result is not None
    assert stored.result.method == "extractive"
    assert stored.result.verification == lead
    assert stored.result.verification.rejected[0].startswith("first: 0.78 of its content")
    failed = await store.get_article(articles[2].id)
    assert failed is not None and failed.result is not None
    assert failed.result.verification == reports["fail"]
    before = await store.get_article(legacy)
    assert before is not None and before.result is not None
    assert (before.result.method, before.result.verification) == ("abstractive", None)

    # /v1/stats of the in-process API reads the same counts
    backend = LocalBackend(settings, _no_model, store=store)  # type: ignore[arg-type]
    transport = httpx.ASGITransport(app=local_app(backend, settings))
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        throughput = (await client.get("/v1/stats")).json()["throughput"]
    assert throughput["methods_24h"] == {"abstractive": 5, "extractive": 1}
    assert throughput["verdicts_24h"] == {"pass": 3, "fail": 1, "unverified": 2}


async def test_rates_of_an_empty_day(pool: asyncpg.Pool) -> None:
    rates = await ResultStore(pool).rates()
    assert rates["methods_24h"] == {"abstractive": 0, "extractive": 0}
    assert rates["verdicts_24h"] == {"pass": 0, "fail": 0, "unverified": 0}
    assert rates["abstractive_share_24h"] is None


def _no_model() -> Summarizer:
    raise AssertionError("these requests must never load the model")


# --- the metrics' failure codes ---------------------------------------------------------------


def test_model_failures_are_the_reports_codes() -> None:
    article = sample_article(0)
    evidence = Evidence.of(article)
    failing = {
        INVENTED: {"low_support", "unsupported_name", "unsupported_number"},
        "Earthquake earthquake earthquake struck the city.": {"repetition"},
        "The article says rescue teams are searching apartment blocks.": {"meta", "low_support"},
        "Earthquake.": {"too_short"},
    }
    base = make_result(article, importance=50)
    lead = article.text.split(". ")[0] + "."
    for summary, codes in failing.items():
        report = verify(summary, evidence)
        assert set(report.failures) == codes, report
        served = _with(base, summary, "abstractive", report)
        assert metrics.model_failures(served) == report.failures
        extract = verify(lead, evidence)
        extract.rejected = [f"first: {'; '.join(report.reasons)}", "retry: unparsable: empty"]
        extract.rejected_failures = [*report.failures, "unparsable"]
        fallback = _with(base, lead, "extractive", extract)
        assert set(metrics.model_failures(fallback)) == codes | {"unparsable"}
    passed = _with(base, FAITHFUL, "abstractive", verify(FAITHFUL, evidence))
    assert metrics.model_failures(passed) == []
    assert metrics.model_failures(_with(base, FAITHFUL, "abstractive", None)) == []
    counted = metrics.count_results([passed, fallback])  # the Ray counters accept the tags
    assert counted == Counter({"too_short": 1, "unparsable": 1})


# --- the Summarizer (real engine) -------------------------------------------------------------


async def test_summarizer_info_counts_methods_verdicts_and_failures(
    summarizer: Summarizer,
) -> None:
    before = Counter(summarizer.info()["summaries"])
    outcomes = await asyncio.gather(*(summarizer.summarize(sample_article(i)) for i in range(4)))
    results = [o for o in outcomes if isinstance(o, Result)]
    assert len(results) == 4, outcomes
    assert all(r.verification is not None for r in results)  # the default guard verifies
    assert all(r.method == "abstractive" or r.verification.rejected for r in results)
    info = summarizer.info()
    served = Counter(f"{r.method}/{r.verification.verdict}" for r in results)  # type: ignore[union-attr]
    assert Counter(info["summaries"]) - before == served
    expected = Counter(code for r in results for code in metrics.model_failures(r))
    assert info["verifier_failures"] == dict(sorted(expected.items()))
    for r in results:
        if r.method == "extractive":  # the model's summaries were rejected: say why
            assert metrics.model_failures(r), r.verification


# --- the digest page --------------------------------------------------------------------------


class _Tree(HTMLParser):
    """index.html's <body> as nested {tag, attrs, children} (text as strings)."""

    VOID = frozenset({"meta", "link", "input", "br", "img", "hr"})

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[dict] = []
        self.body: dict | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = {"tag": tag, "attrs": {k: v or "" for k, v in attrs}, "children": []}
        if tag == "body":
            self.body = node
        elif self.stack:
            self.stack[-1]["children"].append(node)
        if tag not in self.VOID and (self.stack or tag == "body"):
            self.stack.append(node)

    def handle_endtag(self, tag: str) -> None:
        if self.stack and self.stack[-1]["tag"] == tag:
            self.stack.pop()

    def handle_data(self, data: str) -> None:
        if self.stack:
            self.stack[-1]["children"].append(data)


# Enough of the DOM for digest.js: elements with ids, classes, text, children, dataset,
# template content; fetch answers the given payload; timers never fire (no refresh).
_HARNESS = r"""
"use strict";
const fs = require("fs");
const vm = require("vm");
const [tree, payload] = [2, 3].map((i) => JSON.parse(fs.readFileSync(process.argv[i], "utf8")));
const source = fs.readFileSync(process.argv[4], "utf8");

class Text {
  constructor(data) { this.data = data; this.parentNode = null; }
  get textContent() { return this.data; }
  cloneNode() { return new Text(this.data); }
}
class El {
  constructor(tag) {
    this.tagName = tag.toUpperCase();
    this.childNodes = []; this.parentNode = null; this.attributes = {}; this.dataset = {};
    this.hidden = false; this.className = ""; this.id = ""; this.title = ""; this.value = "";
    this.content = null;
  }
  get children() { return this.childNodes.filter((n) => n instanceof El); }
  get firstElementChild() { return this.children[0] || null; }
  get options() { return this.children.filter((c) => c.tagName === "OPTION"); }
  get textContent() { return this.childNodes.map((n) => n.textContent).join(""); }
  set textContent(text) { this.replaceChildren(String(text)); }
  get classList() {
    const names = () => this.className.split(/\s+/).filter(Boolean);
    return {
      add: (...c) => { this.className = [...new Set([...names(), ...c])].join(" "); },
      remove: (...c) => { this.className = names().filter((n) => !c.includes(n)).join(" "); },
      contains: (c) => names().includes(c),
    };
  }
  add(option) { this.append(option); }
  append(...items) {
    for (const item of items) {
      const n = typeof item === "string" ? new Text(item) : item;
      if (n.parentNode) n.parentNode.removeChild(n);
      n.parentNode = this;
      this.childNodes.push(n);
    }
  }
  removeChild(n) { this.childNodes = this.childNodes.filter((c) => c !== n); n.parentNode = null; }
  replaceChildren(...items) {
    for (const c of this.childNodes) c.parentNode = null;
    this.childNodes = [];
    this.append(...items);
  }
  remove() { if (this.parentNode) this.parentNode.removeChild(this); }
  setAttribute(k, v) { this.attributes[k] = String(v); }
  getAttribute(k) { return k in this.attributes ? this.attributes[k] : null; }
  addEventListener() {}
  matches(sel) {
    if (sel.startsWith(".")) return this.classList.contains(sel.slice(1));
    if (sel.startsWith("#")) return this.id === sel.slice(1);
    return this.tagName === sel.toUpperCase();
  }
  querySelectorAll(sel) {
    if (!/^[.#]?[\w-]+$/.test(sel)) throw new Error(`selector not supported here: ${sel}`);
    const out = [];
    const walk = (e) => {
      for (const c of e.children) { if (c.matches(sel)) out.push(c); walk(c); }
    };
    walk(this);
    if (this.content) walk(this.content);
    return out;
  }
  querySelector(sel) { return this.querySelectorAll(sel)[0] || null; }
  cloneNode(deep) {
    const c = new El(this.tagName);
    for (const k of ["className", "id", "title", "hidden", "value"]) c[k] = this[k];
    c.attributes = { ...this.attributes };
    c.dataset = { ...this.dataset };
    if (deep) for (const n of this.childNodes) c.append(n.cloneNode(true));
    return c;
  }
}
function build(node) {
  if (typeof node === "string") return new Text(node);
  const el = new El(node.tag);
  for (const [k, v] of Object.entries(node.attrs)) {
    if (k === "class") el.className = v;
    else if (k === "id" || k === "title" || k === "value") el[k] = v;
    else if (k === "hidden") el.hidden = true;
    else el.setAttribute(k, v);
  }
  const parent = node.tag === "template" ? (el.content = new El("#fragment")) : el;
  for (const child of node.children) parent.append(build(child));
  return el;
}
const body = build(tree);
const document = {
  body,
  hidden: false,
  getElementById: (id) => (body.id === id ? body : body.querySelector(`#${id}`)),
  createElement: (tag) => new El(tag),
  addEventListener() {},
};
function Option(text, value) {
  const o = new El("option");
  o.textContent = text;
  o.value = value;
  return o;
}
const requested = [];
const sandbox = {
  document, Option, URLSearchParams, AbortController, console,
  location: { search: "", pathname: "/" },
  history: { replaceState() {} },
  setTimeout: () => 0,
  clearTimeout: () => {},
  fetch: async (url) => {
    requested.push(url);
    return { ok: true, status: 200, json: async () => payload };
  },
};
vm.runInNewContext(source, sandbox, { filename: "digest.js" });
(async () => {
  for (let i = 0; i < 10; i++) await new Promise((r) => setImmediate(r));
  const errorEl = document.getElementById("error");
  const stories = document.getElementById("stories").children.map((li) => {
    const label = li.querySelector(".story-method");
    return {
      id: Number(li.dataset.storyId),
      summary: li.querySelector(".story-summary").textContent,
      meta: li.querySelector(".story-meta").textContent.replace(/\s+/g, " ").trim(),
      label: label && { text: label.textContent, title: label.title, hidden: label.hidden },
    };
  });
  console.log(JSON.stringify({
    requested,
    error: errorEl.hidden ? null : errorEl.textContent,
    status: document.getElementById("status").textContent,
    stories,
  }));
})();
"""


def _render_page(payload: dict, tmp_path: Path) -> dict:
    """What the real digest.js puts in the page for ``payload`` (a /v1/stories body)."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the page's script cannot run here")
    parser = _Tree()
    parser.feed((WEB / "index.html").read_text(encoding="utf-8"))
    assert parser.body is not None
    (tmp_path / "tree.json").write_text(json.dumps(parser.body), encoding="utf-8")
    (tmp_path / "payload.json").write_text(json.dumps(payload), encoding="utf-8")
    (tmp_path / "harness.js").write_text(_HARNESS, encoding="utf-8")
    files = [tmp_path / "harness.js", tmp_path / "tree.json", tmp_path / "payload.json"]
    run = subprocess.run(
        [node, *map(str, files), str(WEB / "static" / "digest.js")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


async def test_digest_page_marks_extractive_summaries(
    pool: asyncpg.Pool, settings: Settings, tmp_path: Path
) -> None:
    articles = await store_articles(pool, [sample_article(i) for i in range(3)])
    quake, bakery, budget = articles
    store = ResultStore(pool)
    reports = _reports(quake)
    lead = quake.text.split(". ")[0] + "."
    extracted = _with(make_result(quake, importance=80), lead, "extractive", reports["extract"])
    await store.save(quake, extracted)
    evidence = Evidence.of(bakery)
    summary = "A family bakery on Mill Street has started selling a rye sourdough loaf."
    _, passed = check(summary, evidence)
    await store.save(
        bakery, _with(make_result(bakery, importance=60), summary, "abstractive", passed)
    )
    await store.save(budget, make_result(budget, importance=40))
    await pool.execute(  # the budget's Result is from before the verifier
        "UPDATE results SET result = result - 'method' - 'verification' WHERE article_id = $1",
        budget.id,
    )
    vectors = np.eye(3, 384, dtype=np.float32)  # unrelated stories: one per article
    async with pool.acquire() as conn:
        report = await assign_articles(
            conn, articles, vectors, threshold=settings.story_similarity_threshold, window_h=48
        )
    assert report.assigned == 3

    backend = LocalBackend(settings, _no_model, store=store)  # type: ignore[arg-type]
    transport = httpx.ASGITransport(app=local_app(backend, settings))
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        stories = (await client.get("/v1/stories")).json()
        listed = (await client.get("/v1/articles")).json()
    assert [s["method"] for s in stories["stories"]] == ["extractive", "abstractive", "abstractive"]
    assert [s["articles"][0]["method"] for s in stories["stories"]] == [
        "extractive",
        "abstractive",
        "abstractive",
    ]
    by_id = {a["id"]: a for a in listed["articles"]}
    assert by_id[quake.id]["method"] == "extractive"
    assert by_id[quake.id]["result"]["verification"]["rejected"] == reports["extract"].rejected
    assert by_id[bakery.id]["method"] == "abstractive"
    assert by_id[bakery.id]["result"]["verification"]["verdict"] == "pass"
    assert by_id[budget.id]["result"]["verification"] is None

    page = _render_page(stories, tmp_path)
    assert page["error"] is None and page["requested"][0].startswith("/v1/stories?")
    shown = page["stories"]
    assert [s["id"] for s in shown] == [s["id"] for s in stories["stories"]]
    for s, api in zip(shown, stories["stories"], strict=True):
        assert s["summary"] == api["summary"]  # the label is not part of the summary's text
    label = shown[0]["label"]
    assert label is not None and label["text"] == "from the article" and not label["hidden"]
    assert "faithfulness check" in label["title"] and "article's own sentences" in label["title"]
    assert shown[0]["meta"].endswith("from the article")
    assert shown[1]["label"] is None and shown[2]["label"] is None
