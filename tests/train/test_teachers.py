"""HTTP teachers against a real local server the test starts: timeouts and garbage are retried
with backoff, and counted in the run report; a good answer becomes a pair."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from core.article import Article
from train.generate_training_data import generate
from train.pairs import iter_jsonl
from train.teachers import OpenAITeacher, ServeTeacher, TeacherError, parse_teacher_json

ARTICLE_TEXT = (
    "Floodwaters have cut off three towns in northern New South Wales after two days of heavy "
    "rain. Emergency crews rescued 40 people from rooftops overnight. More rain is forecast."
)
GOOD_SUMMARY = "Floodwaters have cut off three towns in northern New South Wales after heavy rain."


def _chat(content: str) -> bytes:
    return json.dumps(
        {"choices": [{"message": {"role": "assistant", "content": content}}]}
    ).encode()


class Script:
    """Answers per request, in order (the last one repeats): (delay_s, status, body)."""

    def __init__(self, answers: list[tuple[float, int, bytes]]) -> None:
        self.answers = answers
        self.requests: list[dict] = []
        self.lock = threading.Lock()

    def next(self, body: dict) -> tuple[float, int, bytes]:
        with self.lock:
            self.requests.append(body)
            index = min(len(self.requests) - 1, len(self.answers) - 1)
            return self.answers[index]


@pytest.fixture
def server() -> Iterator[tuple[str, dict[str, Script]]]:
    scripts: dict[str, Script] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}")
            script = scripts[self.path]
            delay, status, payload = script.next(body)
            time.sleep(delay)
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client timed out first

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", scripts
    httpd.shutdown()
    httpd.server_close()


def _articles(n: int) -> list[Article]:
    return [
        Article(id=i + 1, title=f"Floods cut off towns {i}", text=f"Report {i}. " + ARTICLE_TEXT)
        for i in range(n)
    ]


async def test_timeout_then_garbage_then_good_is_retried(server, tmp_path: Path):
    base, scripts = server
    good = _chat(json.dumps({"summary": GOOD_SUMMARY, "importance": 71}))
    scripts["/v1/chat/completions"] = Script(
        [
            (2.0, 200, good),  # slower than the 0.5 s timeout
            (0.0, 200, _chat("Sure! Here is what I think about floods.")),  # no JSON
            (0.0, 503, b'{"error": "overloaded"}'),
            (0.0, 200, good),
        ]
    )
    teacher = OpenAITeacher(f"{base}/v1", "teacher-model", timeout_s=0.5)
    report = await generate(
        _articles(1), teacher, tmp_path, retries=3, backoff_s=0.01, progress=False
    )
    assert report.retried == 3
    assert sum(report.written.values()) == 1 and report.failed == report.invalid == 0
    pairs = [r for s in ("train", "val") for _, r, _ in iter_jsonl(tmp_path / f"{s}.jsonl")]
    assert pairs[0]["target"] == {"summary": GOOD_SUMMARY, "importance": 71.0}
    assert pairs[0]["teacher"]["model"] == "teacher-model"
    sent = scripts["/v1/chat/completions"].requests[0]
    assert sent["model"] == "teacher-model"
    assert "Floods cut off towns 0" in sent["messages"][-1]["content"]


async def test_garbage_and_timeouts_exhaust_retries_and_are_counted(server, tmp_path: Path):
    base, scripts = server
    scripts["/garbage/chat/completions"] = Script(
        [(0.0, 200, _chat('{"summary": "", "importance": "very"}'))]
    )
    scripts["/slow/chat/completions"] = Script([(1.5, 200, _chat("{}"))])
    garbage = OpenAITeacher(f"{base}/garbage", "m", timeout_s=2)
    report = await generate(
        _articles(3), garbage, tmp_path / "a", retries=2, backoff_s=0.01, progress=False
    )
    assert report.invalid == 3 and report.failed == 0 and report.retried == 6
    assert sum(report.written.values()) == 0
    assert len(scripts["/garbage/chat/completions"].requests) == 9

    slow = OpenAITeacher(f"{base}/slow", "m", timeout_s=0.3)
    started = time.monotonic()
    report = await generate(
        _articles(4),
        slow,
        tmp_path / "b",
        retries=1,
        concurrency=4,
        backoff_s=0.01,
        progress=False,
    )
    assert report.failed == 4 and report.retried == 4
    assert time.monotonic() - started < 3  # concurrent, and each call cut at its timeout
    saved = json.loads((tmp_path / "b" / "report.json").read_text())
    assert saved["failed"] == 4 and any("timed out" in r for r in saved["reasons"])


async def test_client_errors_are_not_retried(server):
    base, scripts = server
    scripts["/v1/chat/completions"] = Script([(0.0, 401, b'{"error": "bad key"}')])
    teacher = OpenAITeacher(f"{base}/v1", "m", timeout_s=2)
    with pytest.raises(TeacherError) as info:
        await teacher.label(_articles(1)[0])
    assert not info.value.retryable and "401" in str(info.value)
    await teacher.aclose()


async def test_serve_teacher_reads_a_result_and_an_article_error(server):
    base, scripts = server
    result = {
        "kind": "result",
        "summary": GOOD_SUMMARY,
        "importance": 64.5,
        "model_id": "gpu-7b/qwen",
        "adapter_id": None,
    }
    error = {"error": {"code": "empty_input", "message": "article text is empty"}}
    scripts["/v1/summarize"] = Script(
        [
            (0.0, 200, json.dumps(result).encode()),
            (0.0, 422, json.dumps(error).encode()),
            (0.0, 503, b'{"error": {"code": "unavailable"}}'),
        ]
    )
    teacher = ServeTeacher(base, api_key="k", timeout_s=2)
    label = await teacher.label(_articles(1)[0])
    assert label.summary == GOOD_SUMMARY and label.importance == 64.5
    assert label.teacher_model == "gpu-7b/qwen"
    assert scripts["/v1/summarize"].requests[0]["title"] == "Floods cut off towns 0"
    with pytest.raises(TeacherError) as info:
        await teacher.label(_articles(1)[0])
    assert not info.value.retryable and "empty_input" in str(info.value)
    with pytest.raises(TeacherError) as info:
        await teacher.label(_articles(1)[0])
    assert info.value.retryable
    await teacher.aclose()


def test_teacher_json_parsing():
    assert parse_teacher_json('```json\n{"summary": "a b c", "importance": 5}\n```') == {
        "summary": "a b c",
        "importance": 5,
    }
    for bad in ("no json here", "{broken", "[1, 2]"):
        with pytest.raises(TeacherError):
            parse_teacher_json(bad)


class ByArticle(Script):
    """Answers by the article asked about: ``answers[i]`` for "Floods cut off towns {i}"."""

    def next(self, body: dict) -> tuple[float, int, bytes]:
        with self.lock:
            self.requests.append(body)
        match = re.search(r"Floods cut off towns (\d+)", json.dumps(body))
        assert match, body
        return self.answers[int(match.group(1))]


def _pairs_in(out: Path) -> list[dict]:
    return [r for s in ("train", "val") for _, r, _ in iter_jsonl(out / f"{s}.jsonl")]


async def test_targets_failing_the_verifier_are_dropped_and_counted(server, tmp_path: Path):
    base, scripts = server

    def answer(summary: str) -> tuple[float, int, bytes]:
        return (0.0, 200, _chat(json.dumps({"summary": summary, "importance": 60})))

    scripts["/v1/chat/completions"] = ByArticle(
        [
            # invented names: the article names no premier and no Queensland
            answer("Floodwaters have cut off three towns in Queensland, Premier Smith said."),
            # a loop
            answer(
                "Floodwaters have cut off three towns, cut off three towns, cut off three towns."
            ),
            # an invented number (the article says 40)
            answer("Emergency crews rescued 400 people from rooftops after heavy rain."),
            # meta phrasing that the verifier repairs: stored repaired
            answer("The article is about floodwaters cutting off three towns after heavy rain."),
            answer(GOOD_SUMMARY),
        ]
    )
    teacher = OpenAITeacher(f"{base}/v1", "teacher-model", timeout_s=5)
    out = tmp_path / "pairs"
    report = await generate(_articles(5), teacher, out, retries=2, progress=False)
    assert report.skipped_unfaithful == 3 and report.retried == 0
    assert report.invalid == report.failed == report.skipped_extractive == 0
    assert report.unfaithful["unsupported_name"] == 1
    assert report.unfaithful["repetition"] == 1
    assert report.unfaithful["unsupported_number"] == 1
    assert sum(report.written.values()) == 2 and report.repaired == 1
    pairs = {p["article_id"]: p for p in _pairs_in(out)}
    assert sorted(pairs) == [4, 5]  # the unfaithful targets never became pairs
    assert pairs[4]["target"]["summary"].startswith("Floodwaters cutting off three towns")
    assert pairs[5]["target"]["summary"] == GOOD_SUMMARY
    assert pairs[5]["verification"]["support"] == 1.0
    assert pairs[4]["verification"]["repairs"] == ["meta lead removed"]
    saved = json.loads((out / "report.json").read_text())
    assert saved["skipped_unfaithful"] == 3
    assert saved["unfaithful"] == {
        "unsupported_name": 1,
        "low_support": 1,  # "Queensland", "Premier", "Smith" are words from nowhere too
        "repetition": 1,
        "unsupported_number": 1,
    }

    # a resumed run asks again only for the dropped articles; they are dropped again
    teacher = OpenAITeacher(f"{base}/v1", "teacher-model", timeout_s=5)
    again = await generate(_articles(5), teacher, out, retries=2, progress=False)
    assert again.already_done == 2 and again.skipped_unfaithful == 3
    assert len(scripts["/v1/chat/completions"].requests) == 5 + 3
    assert sorted(p["article_id"] for p in _pairs_in(out)) == [4, 5]


async def test_a_lower_min_support_keeps_loosely_worded_targets(server, tmp_path: Path):
    base, scripts = server
    loose = "Floodwaters isolated three remote towns in northern New South Wales after heavy rain."
    scripts["/v1/chat/completions"] = ByArticle(
        [(0.0, 200, _chat(json.dumps({"summary": loose, "importance": 50})))]
    )
    strict = await generate(
        _articles(1), OpenAITeacher(f"{base}/v1", "m"), tmp_path / "a", progress=False
    )
    assert strict.skipped_unfaithful == 1 and strict.unfaithful == {"low_support": 1}
    lenient = await generate(
        _articles(1),
        OpenAITeacher(f"{base}/v1", "m"),
        tmp_path / "b",
        progress=False,
        min_support=0.5,
    )
    assert lenient.skipped_unfaithful == 0 and sum(lenient.written.values()) == 1


async def test_serve_teacher_extractive_fallback_is_not_a_target(server, tmp_path: Path):
    base, scripts = server

    def result(summary: str, method: str) -> tuple[float, int, bytes]:
        body = {"kind": "result", "summary": summary, "importance": 55.0, "method": method}
        return (0.0, 200, json.dumps({**body, "model_id": "gpu-7b/qwen"}).encode())

    extract = "Report 0. Floodwaters have cut off three towns in northern New South Wales."
    scripts["/v1/summarize"] = ByArticle(
        [result(extract, "extractive"), result(GOOD_SUMMARY, "abstractive")]
    )
    teacher = ServeTeacher(base, timeout_s=5)
    label = await teacher.label(_articles(1)[0])
    assert label.extractive_fallback
    report = await generate(_articles(2), teacher, tmp_path, progress=False)
    assert report.skipped_extractive == 1 and report.skipped_unfaithful == 0
    pairs = _pairs_in(tmp_path)
    assert [p["article_id"] for p in pairs] == [2]
    assert pairs[0]["target"]["summary"] == GOOD_SUMMARY
    assert json.loads((tmp_path / "report.json").read_text())["skipped_extractive"] == 1
