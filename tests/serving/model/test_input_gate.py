"""The input gate (``serving.model.prompt.language_problem`` via ``check_article``): text that is
not language is refused before the model, with a message that names the problem, everywhere an
article comes in: the prompt code, the HTTP API (422 ``invalid_input``; in a batch the error
stands in place and the good articles are still summarized), ``newsdesk summarize`` (an error
JSON line) and the summarization loop (recorded once, never retried)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from cluster.settings import Settings
from core.article import Article
from serving.deployments.summarizer import Summarizer
from serving.model.prompt import InputError, check_article, language_problem
from serving.model.result import ArticleError, Result
from serving.model.versions import Versions
from serving.summaries.cache import SummaryCache
from serving.summaries.lookup import LookupService, VersionTracker
from serving.summaries.loop import SummarizationLoop
from serving.summaries.result_store import PERMANENT_ERRORS, ResultStore
from tests.support.serve import store_articles

# --- texts ------------------------------------------------------------------------------------

ONE_LETTER = "a" * 5_000_000  # a 5 MB "word"
LOREM_REPEATED = "lorem ipsum dolor sit amet " * 50
LOREM_PARAGRAPH = (
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt "
    "ut labore et dolore magna aliqua. Ut enim ad minim veniam, quis nostrud exercitation "
    "ullamco laboris nisi ut aliquip ex ea commodo consequat. Duis aute irure dolor in "
    "reprehenderit in voluptate velit esse cillum dolore eu fugiat nulla pariatur. Excepteur "
    "sint occaecat cupidatat non proident, sunt in culpa qui officia deserunt mollit anim id "
    "est laborum."
)
BUY_NOW = "buy now " * 100

NEWS = (
    "The regional rail operator will cut the price of monthly passes by a third from March, "
    "its chief executive said on Wednesday, after ridership fell for a second year in a row.\n\n"
    "The cheaper passes will cost 58 euros and cover all trains and buses in the region. The "
    "operator expects the change to cost about 40 million euros a year, which the regional "
    "government has agreed to pay for at least three years.\n\n"
    "Commuter groups welcomed the decision but said delays, not prices, kept people off the "
    "trains. Only 81 percent of services arrived on time last year, the lowest figure since "
    "records began in 2004. The operator said it would hire 300 more drivers by the summer."
)
GERMAN = (
    "Die Bundesregierung hat am Mittwoch das Krankenhausversorgungsverbesserungsgesetz "
    "beschlossen. Nach Angaben des Gesundheitsministeriums sollen damit die "
    "Kraftfahrzeughaftpflichtversicherungsbeiträge der Rettungsdienste sinken und die "
    "Donaudampfschifffahrtsgesellschaftskapitänsmütze bleibt ein Witz der Opposition. Die "
    "Länder müssen dem Gesetz im Bundesrat noch zustimmen; Kritiker bemängeln, dass die "
    "Finanzierung der Kliniken in ländlichen Regionen weiterhin ungeklärt sei."
)
JAPANESE = (
    "気象庁は二十日、九州南部が梅雨明けしたとみられると発表した。平年より五日早く、昨年より三日"
    "遅い。今後一週間は高気圧に覆われて晴れる日が多く、最高気温が三十五度を超える猛暑日となる"
    "地点もある見込みで、気象庁は熱中症への警戒を呼びかけている。"
)
SHORT_ITEM = (
    "A fire closed the central library on Sunday. Nobody was hurt, firefighters said. "
    "The building will reopen on Friday."
)


def _article(text: str, title: str = "An item") -> Article:
    return Article(title=title, text=text, source="Test Wire")


# --- (a) the rules -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        (ONE_LETTER, "words of over 40 letters"),
        (LOREM_REPEATED, "a handful of words repeated"),
        (LOREM_PARAGRAPH, "placeholder text (lorem ipsum)"),
        (BUY_NOW, "a handful of words repeated (2 distinct in 200 words)"),
    ],
    ids=["5MB-one-letter", "lorem-x50", "lorem-paragraph", "buy-now-x100"],
)
def test_not_language_is_refused_naming_the_problem(text: str, needle: str) -> None:
    with pytest.raises(InputError) as refused:
        check_article(_article(text))
    assert refused.value.code == "invalid_input"
    message = str(refused.value)
    assert message.startswith("article text is not language: ")
    assert needle in message
    assert len(message) < 200  # the message names the problem, it does not echo the text


@pytest.mark.parametrize(
    "text",
    [NEWS, GERMAN, JAPANESE, SHORT_ITEM],
    ids=["news", "german-compounds", "japanese", "short-3-sentences"],
)
def test_language_is_accepted(text: str) -> None:
    assert language_problem(text) is None
    check_article(_article(text))  # no InputError


def test_a_sentence_said_a_few_times_is_language_said_thousands_of_times_is_not() -> None:
    sentence = "The council met on Tuesday to discuss the budget for next year. "
    assert language_problem(sentence * 3) is None  # a sloppy feed repeats a paragraph
    assert language_problem(NEWS + " " + sentence * 5_000) is None  # a real lead, junk tail
    problem = language_problem(sentence * 16_000)
    assert problem is not None and "a handful of words repeated" in problem


def test_the_long_word_rule_names_the_size_of_a_huge_run() -> None:
    problem = language_problem("x" * 100_000)
    assert problem is not None and "20,000+ characters" in problem


# --- (b) the HTTP API --------------------------------------------------------------------------

BAD_BODIES = {
    "one-letter": ONE_LETTER,
    "lorem": LOREM_PARAGRAPH,
    "buy-now": BUY_NOW,
}


async def test_api_refuses_non_language_and_still_summarizes_good_articles(
    api: httpx.AsyncClient, summarizer: Summarizer
) -> None:
    for name, text in BAD_BODIES.items():
        response = await api.post("/v1/summarize", json={"title": name, "text": text})
        assert response.status_code == 422, (name, response.text[:500])
        error = response.json()["error"]
        assert error["code"] == "invalid_input", name
        assert error["message"].startswith("article text is not language: "), name
    assert summarizer.info()["articles"] == 0  # refused before the model

    good = {"title": "Rail passes get cheaper", "text": NEWS}
    lorem = {"title": "lorem", "text": LOREM_PARAGRAPH}
    buy = {"title": "buy", "text": BUY_NOW}
    batch = await api.post("/v1/summarize/batch", json={"articles": [lorem, good, buy]})
    assert batch.status_code == 200, batch.text[:500]
    results = batch.json()["results"]
    assert [(o["kind"], o.get("code")) for o in results] == [
        ("error", "invalid_input"),
        ("result", None),
        ("error", "invalid_input"),
    ]
    assert "lorem ipsum" in results[0]["message"]
    assert "a handful of words repeated" in results[2]["message"]
    assert Result.model_validate(results[1]).summary
    assert summarizer.info()["articles"] == 1  # only the good article reached the model

    async with api.stream(
        "POST", "/v1/summarize/stream", json={"articles": [good, lorem]}
    ) as stream:
        lines = [json.loads(line) async for line in stream.aiter_lines() if line]
    by_index = {x["index"]: x["outcome"] for x in lines}
    assert by_index[0]["kind"] == "result"
    assert by_index[1]["code"] == "invalid_input" and "lorem" in by_index[1]["message"]


# --- (c) newsdesk summarize ---------------------------------------------------------------------


def test_cli_prints_an_invalid_input_line_with_the_reason(
    prepared_model_dir: Path, engine_settings: Settings, tmp_path: Path
) -> None:
    files = []
    for name, text in BAD_BODIES.items():
        path = tmp_path / f"{name}.txt"
        path.write_text(f"{name}\n\n{text}\n", encoding="utf-8")
        files.append(str(path))
    script = Path(sys.executable).with_name("newsdesk")
    newsdesk = str(script) if script.exists() else shutil.which("newsdesk") or "newsdesk"
    env = {**os.environ, "NEWSDESK_STATE_DIR": str(engine_settings.state_dir)}
    env.pop("NEWSDESK_MODEL_SOURCE", None)
    done = subprocess.run(
        [newsdesk, "summarize", *files],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(o["kind"], o["code"]) for o in lines] == [("error", "invalid_input")] * 3
    messages = [o["message"] for o in lines]
    assert "words of over 40 letters" in messages[0]
    assert "placeholder text (lorem ipsum)" in messages[1]
    assert "a handful of words repeated" in messages[2]
    assert "3 of 3 articles got an error" in done.stderr


# --- (d) the summarization loop ------------------------------------------------------------------


async def test_loop_records_invalid_input_once_and_never_retries_it(settings: Settings) -> None:
    """A stored lorem article goes through check_article (the lookup's gate, before any model
    call), is recorded as failed with invalid_input, and is not due again, even with no wait
    before retries; a transient failure beside it is retried (the control)."""
    assert "invalid_input" in PERMANENT_ERRORS
    settings = Settings(
        **{**settings.model_dump(), "summarize_retry_after_s": 0.0, "summarize_max_attempts": 3}
    )
    versions = Versions("gate-test-model", None, "gate-test-prompt")
    model_calls: list[str] = []

    async def flaky_model(article: Article) -> ArticleError:
        model_calls.append(article.title)
        return ArticleError(
            article_id=article.id,
            content_hash=article.content_hash,
            code="generation_failed",
            message="the model produced nothing",
            **versions.as_dict(),  # type: ignore[arg-type]
        )

    async def fixed_versions() -> Versions:
        return versions

    store = await ResultStore.open(settings)
    try:
        lorem, flaky = await store_articles(
            store.pool, [_article(LOREM_PARAGRAPH, "Lorem ipsum"), _article(NEWS, "Rail")]
        )
        lookup = LookupService(
            cache=SummaryCache(),
            summarize=flaky_model,
            versions=VersionTracker(fixed_versions),
            store=store,
        )
        loop = SummarizationLoop(
            store=store, summarize=lookup.summarize, versions=fixed_versions, settings=settings
        )
        assert await loop.run_once() == 2
        assert loop.outcomes == {"failed": 2}
        assert model_calls == ["Rail"]  # the lorem article never reached the model

        refused = await store.get_article(lorem.id)  # type: ignore[arg-type]
        assert refused and refused.status == "failed"
        assert refused.error_code == "invalid_input"
        assert refused.error_message and "lorem ipsum" in refused.error_message
        assert refused.attempts == 1

        # next rounds: only the transient failure is due again, until its attempts run out
        assert await loop.run_once() == 1
        assert await loop.run_once() == 1
        assert await loop.run_once() == 0
        assert model_calls == ["Rail"] * 3
        refused = await store.get_article(lorem.id)  # type: ignore[arg-type]
        assert refused and refused.attempts == 1
        retried = await store.get_article(flaky.id)  # type: ignore[arg-type]
        assert retried and retried.error_code == "generation_failed" and retried.attempts == 3
        await loop.close()
    finally:
        await store.close()
