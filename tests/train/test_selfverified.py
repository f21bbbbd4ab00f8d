"""The self-verified teacher: the real default model samples k summaries of real articles, the
verifier judges them, the best passing one becomes the pair (rejection-sampling fine-tuning)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.article import Article
from serving.engine import Candidate, candidate_seed
from serving.model.verifier import Evidence, check
from train.corpus import headline, lee_articles
from train.generate_training_data import generate
from train.pairs import iter_jsonl
from train.teachers import SelfVerifiedTeacher, TeacherError, choose_candidate

ARTICLE = Article(
    title="Floods cut off three towns",
    text="Floodwaters have cut off three towns in northern New South Wales after two days of "
    "heavy rain. Emergency crews rescued 40 people from rooftops overnight.",
)


def candidate(seed: int, summary: str) -> Candidate:
    repaired, report = check(summary, Evidence.of(ARTICLE))
    return Candidate(seed, summary, repaired, report)


def test_a_failing_candidate_never_wins_and_support_then_brevity_decide() -> None:
    invented = candidate(1, "Floodwaters cut off three towns in Queensland, killing 12 people.")
    loose = candidate(2, "Heavy rain brought major chaos and disruption across rural regions.")
    long = candidate(
        3, "Floodwaters have cut off three towns in northern New South Wales after heavy rain."
    )
    short = candidate(4, "Floodwaters have cut off three towns in New South Wales.")
    assert not invented.passed and not loose.passed and long.passed and short.passed
    assert choose_candidate([invented, loose, long, short]) is short
    assert choose_candidate([invented, loose]) is None
    unparsable = Candidate(5, "", None, None)
    assert choose_candidate([unparsable, long]) is long


def test_candidate_seeds_depend_on_the_run_seed_and_the_content_only() -> None:
    a = candidate_seed(0, ARTICLE.content_hash, 0)
    assert a == candidate_seed(0, ARTICLE.content_hash, 0)
    assert (
        len(
            {
                a,
                candidate_seed(0, ARTICLE.content_hash, 1),
                candidate_seed(1, ARTICLE.content_hash, 0),
            }
        )
        == 3
    )


@pytest.fixture(scope="module")
def lee(engine_settings) -> list[Article]:  # type: ignore[no-untyped-def]
    texts = lee_articles(engine_settings.resolved_state_dir(), 6)
    return [Article(id=i + 1, title=headline(t), text=t, source="ABC") for i, t in enumerate(texts)]


def test_sampling_is_reproducible_and_batch_invariant(engine, lee) -> None:
    together = engine.sample(lee[:3], k=2, seed=7, max_new_tokens=24)
    alone = engine.sample(lee[1:2], k=2, seed=7, max_new_tokens=24)
    assert [c.text for c in together[1]] == [c.text for c in alone[0]]
    other_seed = engine.sample(lee[1:2], k=2, seed=8, max_new_tokens=24)
    assert [c.text for c in other_seed[0]] != [c.text for c in alone[0]]
    texts = {c.text for c in together[0]}
    assert len(texts) == 2  # two samples of one article differ
    for cands, article in zip(together, lee, strict=False):
        assert [c.seed for c in cands] == [
            candidate_seed(7, article.content_hash, j) for j in range(2)
        ]
        for c in cands:
            if c.summary is not None:
                assert c.report == check(c.summary, Evidence.of(article))[1].model_copy(
                    update={"repairs": c.report.repairs}
                )


async def test_teacher_writes_only_verified_targets_and_resumes(engine, lee, tmp_path: Path):
    teacher = SelfVerifiedTeacher(engine, k=3, temperature=0.7, seed=1, batch_articles=6)
    report = await generate(lee, teacher, tmp_path, concurrency=6, progress=False)
    pairs = [
        record
        for name in ("train.jsonl", "val.jsonl")
        for _, record, _ in iter_jsonl(tmp_path / name)
        if record is not None
    ]
    written = sum(report.written.values())
    assert written == len(pairs) and written + report.invalid == len(lee), report.as_dict()
    assert teacher.candidates_seen == 3 * len(lee)
    for pair in pairs:
        article = Article.model_validate(pair["article"])
        summary = pair["target"]["summary"]
        assert check(summary, Evidence.of(article))[1].passed
        assert pair["teacher"]["name"] == "self-verified"
        assert "k=3" in pair["teacher"]["version"] and "sample_seed=" in pair["teacher"]["version"]
    for reason in report.reasons:  # an article with no passing candidate is counted, with why
        assert reason.startswith("invalid: no verified candidate of 3")
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["invalid"] == report.invalid
    # a rerun resumes: written articles are not sampled again
    again = SelfVerifiedTeacher(engine, k=3, temperature=0.7, seed=1, batch_articles=6)
    second = await generate(lee, again, tmp_path, concurrency=6, progress=False)
    assert second.already_done == written
    assert again.candidates_seen == 3 * (len(lee) - written)


async def test_unusable_input_is_an_invalid_label(engine) -> None:
    teacher = SelfVerifiedTeacher(engine, k=2)
    with pytest.raises(TeacherError, match="not language"):
        await teacher.label(Article(title="x", text="lorem ipsum dolor sit amet " * 50))
    await teacher.aclose()
