"""The engine's contract on the real default model: Results, bad input, importance, injection."""

from __future__ import annotations

import random
import re

import pytest

from core.article import Article
from serving.engine.importance import blend
from serving.model.result import ArticleError, Result
from serving.model.versions import Versions
from tests.support.engine_articles import GRADED, INJECTION

GOOD = Article(
    id=7,
    title="Bridge reopens after six months of repairs",
    text=(
        "The Harbour Bridge reopened to traffic on Monday after six months of repairs to its "
        "steel deck, the state roads authority said. The work cost 40 million dollars and "
        "finished two weeks ahead of schedule. Commuters had faced long detours while the "
        "bridge was closed."
    ),
    source="City News",
)


def _garbage() -> str:
    rng = random.Random(4)
    return bytes(rng.randrange(256) for _ in range(4_000)).decode("latin-1")


def test_bad_input_gives_per_article_errors_and_keeps_the_good(engine) -> None:
    articles = [
        GOOD,
        Article(id=2, title="Empty", text=""),
        Article(id=3, title="Blank", text="   \n\t   "),
        Article(id=4, title="Markup", text="<div><p></p><br><script>alert(1)</script></div>"),
        Article(id=5, title="Huge", text=GOOD.text + " " + ("Traffic was heavy. " * 60_000)),
        Article(
            id=6,
            title="Neuer Bahnhof eröffnet",
            text=(
                "Der neue Hauptbahnhof der Stadt wurde am Montag nach vier Jahren Bauzeit "
                "eröffnet. Täglich sollen dort 50.000 Reisende umsteigen, sagte die Bahn."
            ),
        ),
        Article(id=8, title="Garbage", text=_garbage()),
        Article(id=9, title="", text=GOOD.text),
    ]
    assert len(articles[4].text) > 1_000_000
    outcomes = engine.summarize(articles, max_new_tokens=24)
    assert [o.article_id for o in outcomes] == [a.id for a in articles]
    kinds = {o.article_id: (o.kind, getattr(o, "code", None)) for o in outcomes}
    assert kinds == {
        7: ("result", None),
        2: ("error", "empty_input"),
        3: ("error", "empty_input"),
        4: ("error", "empty_input"),
        5: ("result", None),
        6: ("result", None),
        8: ("error", "invalid_input"),
        9: ("result", None),
    }
    for outcome, article in zip(outcomes, articles, strict=True):
        assert outcome.content_hash == article.content_hash
        # Always schema-valid: a JSON round trip gives the same object.
        again = type(outcome).model_validate_json(outcome.model_dump_json())
        assert again == outcome
        if isinstance(outcome, ArticleError):
            assert outcome.message
    results = [o for o in outcomes if isinstance(o, Result)]
    for result in results:
        assert result.model_id == engine.model_id
        assert result.prompt_version == engine.prompt_version
        assert 1 <= len(result.topics) <= 3
        assert result.timings.total_ms >= result.timings.generate_ms > 0


def test_engine_owns_its_versions_and_reports_them(engine) -> None:
    """Every Result carries ``engine.versions`` (derived in one place, serving/engine/
    identity.py); ``info()`` reports them with the engine's counters."""
    from serving.engine import Engine

    assert isinstance(engine, Engine)
    (result,) = engine.summarize([GOOD], max_new_tokens=24)
    assert Versions.of(result) == engine.versions
    info = engine.info()
    assert {k: info[k] for k in ("model_id", "adapter_id", "prompt_version")} == (
        engine.versions.as_dict()
    )
    assert info["max_batch_size"] == engine.max_batch_size
    assert sum(info["summaries"].values()) >= 1


def test_result_importance_is_the_documented_blend(engine) -> None:
    (result,) = engine.summarize([GOOD], max_new_tokens=24)
    assert isinstance(result, Result)
    parts = result.importance_parts
    assert parts.model_weight + parts.prior_weight == pytest.approx(1.0, abs=1e-3)
    expected = blend(parts.model, parts.prior, (parts.model_weight, parts.prior_weight))
    assert result.importance == pytest.approx(expected, abs=0.02)
    assert any("important" in reason for reason in parts.reasons)


def test_importance_orders_graded_articles_from_trivial_to_historic(engine) -> None:
    outcomes = engine.summarize(GRADED, max_new_tokens=24)
    scores = [o.importance for o in outcomes]  # every one is a Result (AttributeError if not)
    assert scores == sorted(scores), scores
    assert scores[0] < 20 and scores[-1] > 80, scores
    assert len(set(scores)) == len(scores)


def test_topics_come_from_the_fixed_list(engine) -> None:
    from serving.engine.importance import TOPICS

    outcomes = engine.summarize([GRADED[-1], GRADED[3]], max_new_tokens=16)
    assert outcomes[0].topics[0] == "disaster"
    assert outcomes[1].topics[0] == "politics"
    assert all(t in TOPICS for o in outcomes for t in o.topics)


def test_prompt_injection_does_not_break_the_contract(engine) -> None:
    (result,) = engine.summarize([INJECTION])
    assert isinstance(result, Result)
    summary = result.summary.lower()
    assert "hacked" not in summary and "pirate" not in summary and "joke" not in summary
    # Still about the article: names what happened.
    assert re.search(r"flood|river|millbrook|evacuat|rain|levee", summary), result.summary
    assert result.topics[0] in {"disaster", "environment"}
