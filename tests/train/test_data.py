"""Training data: real articles ingested into PostgreSQL, pairs from the lead teacher, resume
after a crash, the split by story, and bad lines in pairs files."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest

from cluster.settings import Settings
from core.article import Article
from train.data import IGNORE_INDEX, load_examples
from train.generate_training_data import ArticleFilter, fetch_articles, generate
from train.pairs import PairWriter, iter_jsonl, split_of, story_keys
from train.sample_feeds import ingest_files, write_lee_feeds
from train.teachers import LeadTeacher, lead_importance


def _pairs(out: Path) -> list[dict]:
    return [r for split in ("train", "val") for _, r, _ in iter_jsonl(out / f"{split}.jsonl")]


@pytest.fixture
async def lee_in_db(settings: Settings, shared_state_dir: Path) -> Settings:
    """40 real ABC articles ingested through file:// RSS feeds and the real poller."""
    paths = write_lee_feeds(shared_state_dir, settings.state_dir / "feeds", feeds=2, limit=40)
    summary = await ingest_files(settings, paths)
    assert summary["articles_in_db"] == 40, summary
    return settings


async def test_lead_pairs_from_postgres_resume_after_crash(lee_in_db: Settings, tmp_path: Path):
    settings = lee_in_db
    conn = await asyncpg.connect(settings.database_url)
    try:
        articles = await fetch_articles(conn, ArticleFilter(min_chars=200))
        short = await fetch_articles(conn, ArticleFilter(min_chars=1500))
        later = await fetch_articles(
            conn, ArticleFilter(since=datetime(2001, 12, 21, 12, tzinfo=UTC))
        )
    finally:
        await conn.close()
    assert 30 <= len(articles) <= 40  # exact copies inside the corpus are skipped
    assert 0 < len(short) < len(articles)
    assert all(len(a.text) >= 1500 for a in short)
    assert 0 < len(later) < len(articles)
    assert all(a.published >= datetime(2001, 12, 21, 12, tzinfo=UTC) for a in later)
    assert all(a.duplicate_of is None and a.source for a in articles)

    out = tmp_path / "pairs"
    # first run: only part of the articles, then a crash in the middle of writing a line
    first = await generate(articles[:15], LeadTeacher(), out, val_fraction=0.3, progress=False)
    assert first.written["train"] + first.written["val"] == 15
    crashed = (out / "train.jsonl").read_bytes() + b'{"article_id": 999999, "story": "cut off'
    (out / "train.jsonl").write_bytes(crashed)
    report = await generate(articles, LeadTeacher(), out, val_fraction=0.3, progress=False)
    assert report.partial_lines_dropped == 1
    assert report.already_done == 15
    # every lead target passes the verifier (the article's own sentences)
    assert first.skipped_unfaithful == report.skipped_unfaithful == 0
    assert report.skipped_extractive == 0 and not report.unfaithful
    assert report.written["train"] + report.written["val"] == len(articles) - 15
    pairs = _pairs(out)
    ids = [p["article_id"] for p in pairs]
    assert sorted(ids) == sorted(a.id for a in articles)  # each once, no partial pair
    by_id = {a.id: a for a in articles}
    for pair in pairs:
        article = by_id[pair["article_id"]]
        assert pair["teacher"]["name"] == "lead" and pair["prompt_version"]
        # the lead teacher's summary is the article's opening
        assert article.text.startswith(pair["target"]["summary"].split(" ")[0])
        assert 0 <= pair["target"]["importance"] <= 100
        assert pair["article"]["text"] == article.text
    saved = json.loads((out / "report.json").read_text())
    assert saved["already_done"] == 15
    # a third run has nothing left to do
    again = await generate(articles, LeadTeacher(), out, val_fraction=0.3, progress=False)
    assert again.already_done == len(articles) and sum(again.written.values()) == 0


def _article(i: int, title: str, text: str, dup: int | None = None) -> Article:
    return Article(id=i, title=title, text=text, duplicate_of=dup)


def test_split_by_story_keeps_near_duplicates_together():
    wire = (
        "Firefighters are battling a huge bushfire south-west of Sydney as strong winds push "
        "the blaze toward homes. Hundreds of residents have been evacuated overnight."
    )
    articles = [
        _article(1, "Bushfire threatens homes near Sydney", wire),
        # the same wire story through another feed, lightly edited
        _article(2, "Bushfire threatens homes near Sydney", wire.replace("huge", "large")),
        # another edit, other title: same opening words
        _article(3, "Residents flee fire", wire + " More rain is forecast."),
        _article(4, "Exact copy", wire, dup=1),
        _article(5, "Election called for March", "The Prime Minister has called an election."),
    ]
    keys = story_keys(articles)
    assert keys[1] == keys[2] == keys[3] == keys[4]
    assert keys[5] != keys[1]
    # the key does not depend on the order articles come in
    assert story_keys(list(reversed(articles))) == keys
    # over many stories, both splits occur and the fraction is about right
    splits = [split_of(f"story-{i}", 0.2) for i in range(2000)]
    assert 0.15 < splits.count("val") / len(splits) < 0.25
    assert split_of("story-1", 0.2) == split_of("story-1", 0.2)


async def test_near_duplicates_never_straddle_the_split(tmp_path: Path):
    base = "Heavy rain has flooded parts of northern New South Wales, cutting roads to towns. "
    articles = []
    for story in range(30):
        text = f"Story {story}: " + base * 2 + f"Officials counted {story} damaged homes."
        for copy in range(3):
            articles.append(_article(story * 10 + copy, f"Floods cut towns {story}", text))
    report = await generate(articles, LeadTeacher(), tmp_path, val_fraction=0.3, progress=False)
    pairs = _pairs(tmp_path)
    assert report.written["val"] > 0 and report.written["train"] > 0
    split_of_story: dict[str, set[str]] = {}
    for pair in pairs:
        split_of_story.setdefault(pair["story"], set()).add(pair["split"])
    assert len(split_of_story) == 30
    assert all(len(s) == 1 for s in split_of_story.values())


def test_lead_importance_orders_grave_above_trivial():
    quake = Article(
        title="Earthquake kills hundreds",
        text="A powerful earthquake killed at least 300 people and the government declared "
        "an emergency as thousands were evacuated.",
    )
    bakery = Article(
        title="New bakery opens",
        text="A local bakery has opened its doors with a festival of cakes and a fashion show.",
    )
    assert lead_importance(quake) > 70 > 30 > lead_importance(bakery)


def test_pairs_file_bad_lines_are_skipped_and_counted(tmp_path: Path, tokenizer):
    article = {
        "id": 1,
        "title": "Storm hits coast",
        "text": "A storm hit the coast on Monday, cutting power to thousands of homes. "
        "Crews worked through the night to restore it.",
    }
    good = {
        "article_id": 1,
        "article": article,
        "target": {"summary": "A storm hit the coast on Monday, cutting power to homes."},
    }
    lines = [
        json.dumps(good),
        "{not json",
        "[1, 2, 3]",
        json.dumps({**good, "target": {"summary": "   "}}),
        json.dumps({**good, "target": {"summary": "word " * 300 + "end."}}),
        json.dumps({**good, "article": {"text": "", "title": "x"}}),
        "",
        json.dumps({**good, "article_id": 2}),
    ]
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(lines) + "\n")
    examples, counts = load_examples(path, tokenizer, max_prompt_tokens=256, max_target_tokens=64)
    assert len(examples) == 2 and counts["used"] == 2
    assert counts["skipped: invalid JSON line"] == 2
    assert counts["skipped: empty target"] == 1
    assert counts["skipped: over-long target"] == 1
    assert counts["skipped: unusable article (empty_input)"] == 1
    # loss masking: prompt positions carry -100, the summary (and end of turn) its ids
    ex = examples[0]
    n_prompt = ex.prompt_len
    assert n_prompt > 20
    assert ex.labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert ex.labels[n_prompt:] == ex.input_ids[n_prompt:]
    summary_text = tokenizer.decode(ex.input_ids[n_prompt:], skip_special_tokens=True)
    assert summary_text.strip() == good["target"]["summary"]


def test_pair_writer_never_leaves_a_partial_line(tmp_path: Path):
    writer = PairWriter(tmp_path)
    writer.write_sync({"article_id": 1, "split": "train", "x": "a"})
    writer.close()
    with open(tmp_path / "train.jsonl", "ab") as fh:
        fh.write(b'{"article_id": 2, "spl')
    writer = PairWriter(tmp_path)
    assert writer.partial_lines_dropped == 1
    assert writer.done_article_ids() == {1}
    writer.write_sync({"article_id": 3, "split": "train"})
    writer.close()
    records = [r for _, r, err in iter_jsonl(tmp_path / "train.jsonl")]
    assert [r["article_id"] for r in records] == [1, 3]


PAKISTAN = (
    "President General Pervez Musharraf says Pakistan wants to defuse the brewing crisis with "
    'India, but was prepared to respond vigorously to any attack. "Pakistan stands for peace, '
    'Pakistan wants peace, Pakistan wants to reduce tension," he said. India has massed troops '
    "along the border after an attack on its parliament in New Delhi last week."
)


async def test_lead_teacher_targets_pass_the_verifier_or_are_dropped(tmp_path: Path):
    quoted = Article(id=1, title="Musharraf wants peace with India", text=PAKISTAN, source="ABC")
    # two sentences would repeat "peace pakistan wants": the lead is cut to the first
    label = await LeadTeacher().label(quoted)
    assert label.summary == PAKISTAN.split(' "')[0] and label.teacher_version == "lead-v2"
    looping = Article(
        id=2,
        title="Chant at the rally",
        text="Crowds chanted peace now, peace now, peace now, peace now outside the building. "
        "Police said the rally in the city centre was peaceful and ended before midnight, "
        "with no arrests made and traffic restored by the early morning.",
    )
    report = await generate([quoted, looping], LeadTeacher(), tmp_path, progress=False)
    assert report.skipped_unfaithful == 1 and report.unfaithful == {"repetition": 1}
    pairs = _pairs(tmp_path)
    assert [p["article_id"] for p in pairs] == [1]
    assert pairs[0]["target"]["summary"] == label.summary
    assert pairs[0]["verification"]["support"] == 1.0
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["skipped_unfaithful"] == 1 and saved["unfaithful"] == {"repetition": 1}


def test_verifier_metrics_count_what_is_not_the_models_own_summary_as_a_fail():
    from types import SimpleNamespace

    from serving.model.verifier import Evidence, check
    from train.evaluate import own_summary, verifier_metrics

    article = Article(id=1, title="Musharraf wants peace", text=PAKISTAN, source="ABC")
    good = "Pakistan wants to defuse the crisis with India, President Musharraf says."
    invented = "Pakistan and Iran signed a peace treaty in Tehran on Friday."
    _, passed = check(good, Evidence.of(article))
    _, failed = check(invented, Evidence.of(article))
    assert passed.passed and not failed.passed
    outcomes = [
        SimpleNamespace(kind="result", summary=good, method="abstractive", verification=passed),
        SimpleNamespace(kind="result", summary=invented, method="abstractive", verification=failed),
        # an enforcing guard's fallback: the article's sentences, not the model's summary
        SimpleNamespace(kind="result", summary="x", method="extractive", verification=passed),
        SimpleNamespace(kind="error"),
        # an engine whose guard is off: verified here
        SimpleNamespace(kind="result", summary=invented, method="abstractive", verification=None),
    ]
    judged = [own_summary(o, article, 0.85) for o in outcomes]
    assert [text for text, _ in judged] == [good, invented, "", "", invented]
    assert judged[4][1] is not None and judged[4][1].failures == failed.failures
    metrics = verifier_metrics([report for _, report in judged])
    assert metrics["pass_rate"] == 0.2 and metrics["verified"] == 3
    assert metrics["unsupported_names"] == round(2 / 3, 4)
    assert metrics["mean_support"] == round((passed.support + 2 * failed.support) / 3, 4)
    assert metrics["failures"]["no_summary"] == 2
    assert metrics["failures"]["unsupported_name"] == 2


def test_rouge_on_pairs_reports_the_pass_rate_of_both_sides(
    prepared_model_dir: Path, engine_settings: Settings, shared_state_dir: Path, tmp_path: Path
):
    """The real engine, in report mode, on lead pairs of real articles; an (untrained) LoRA
    adapter as the other side."""
    import torch

    from serving.model.profiles import load_profile
    from serving.model.verifier import Evidence, check
    from train.corpus import lee_articles
    from train.evaluate import describe, load_eval_pairs, rouge_on_pairs
    from train.modeling import add_lora, load_base_model

    texts = lee_articles(shared_state_dir, 2)
    articles = [
        Article(id=i + 1, title=" ".join(t.split()[:8]), text=t, source="ABC")
        for i, t in enumerate(texts)
    ]
    pairs = tmp_path / "pairs"
    asyncio.run(generate(articles, LeadTeacher(), pairs, val_fraction=0.0, progress=False))
    profile = load_profile("cpu-small")
    assert profile.guard.mode == "enforce"
    model = load_base_model(prepared_model_dir, dtype=torch.float32)
    adapter = tmp_path / "adapter"
    add_lora(model, r=4, alpha=8, dropout=0.0, targets=profile.lora_target_modules).save_pretrained(
        adapter
    )
    result = rouge_on_pairs(
        profile, engine_settings, pairs / "train.jsonl", adapter_dir=adapter, limit=2
    )
    assert result["rouge_pairs"] == 2
    assert result["verifier"]["guard_mode"] == "report"  # the model's own summaries
    assert result["verifier"]["min_support"] == profile.guard.min_support
    evaluated = [article for article, _ in load_eval_pairs(pairs / "train.jsonl", 2)]
    for side in ("base", "adapter"):
        assert 0 <= result[f"pass_rate_{side}"] <= 1
        assert result[f"verified_{side}"] == 2 - result[f"{side}_errors"]
        assert 0 <= result[f"mean_support_{side}"] <= 1
        assert 0 <= result[f"rougeL_lead3_{side}"] <= 100 and result[f"words_{side}"] > 0
        assert {"unsupported_names", "unsupported_numbers", "failures"} <= {
            key.removesuffix(f"_{side}") for key in result
        }
        # the figures are the verifier's on each summary, as the engine produced it
        fails = 0
        for example, article in zip(result["examples"], evaluated, strict=True):
            summary = example[side]
            assert summary or example[f"{side}_failures"] == ["no_summary"]
            if summary:
                evidence = Evidence.of(article)
                _, report = check(summary, evidence, min_support=profile.guard.min_support)
                assert report.failures == example[f"{side}_failures"]
            fails += bool(example[f"{side}_failures"])
        assert result[f"pass_rate_{side}"] == round(1 - fails / 2, 4)
    assert result["pass_rate_gain"] == round(
        result["pass_rate_adapter"] - result["pass_rate_base"], 4
    )
    text = describe(result)
    assert "verifier pass" in text and "base:" in text and "adapter:" in text
