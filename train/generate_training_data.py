"""Training pairs from stored articles: ``python -m train.generate_training_data``.

Reads articles from PostgreSQL (length, language and date filters; exact duplicates skipped),
asks a teacher (:mod:`train.teachers`) for each article's target summary and importance, and
appends pairs to ``OUT/train.jsonl`` and ``OUT/val.jsonl`` (:mod:`train.pairs`), split by story
so near-duplicates never straddle the split. Re-running the same command resumes: articles
already in either file are skipped, a line cut by a crash is dropped first. Teacher calls run
``--concurrency`` at a time with retries and exponential backoff; the run report
(``OUT/report.json``, also printed) counts what was written, skipped, invalid and retried.

Every target is checked by :mod:`serving.model.verifier` against its article, as the engine checks
a summary before serving it (repair, then verify; ``min_support`` from ``--profile``'s guard
unless ``--min-support`` is given): a target that fails is dropped, counted as
``skipped_unfaithful`` with its failure codes in ``unfaithful`` (a model that learns from
invented names or loops repeats them); a passing one is stored as repaired ("The article is
about X." -> "X."), with the verifier's version and support in the pair. A ``serve`` teacher's
Result that is the engine's extractive fallback (``method: extractive``: its model's summaries
failed) is dropped too, counted as ``skipped_extractive``: it is the article's own sentences,
and the point of the pairs is to teach abstractive summaries (the ``lead`` teacher, extractive
by design, is the explicit choice for that). Dropped articles are not written, so a resumed
run asks the teacher again, as for invalid and failed ones.

    python -m train.generate_training_data --teacher lead --out $STATE/training/pairs
    python -m train.generate_training_data --teacher self-verified --k 4 --concurrency 8
    python -m train.generate_training_data --teacher openai \\
        --teacher-url http://vllm:8000/v1 --teacher-model Qwen/Qwen2.5-72B-Instruct
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
from tqdm import tqdm

from core import db
from core.article import Article
from core.article_rows import ARTICLE_COLUMNS, article_from_row
from serving.model.prompt import PROMPT_VERSION, InputError, check_article
from serving.model.verifier import DEFAULT_MIN_SUPPORT, VERIFIER_VERSION, Evidence, check
from train.pairs import PairWriter, article_record, split_of, story_keys
from train.settings import TrainSettings
from train.teachers import Teacher, TeacherError, make_teacher

log = logging.getLogger(__name__)


@dataclass
class ArticleFilter:
    min_chars: int = 200
    max_chars: int = 100_000
    language: str | None = "en"  # prefix match; articles with unknown language are kept
    since: datetime | None = None
    until: datetime | None = None
    limit: int | None = None
    include_duplicates: bool = False


@dataclass
class Report:
    selected: int = 0
    already_done: int = 0
    written: dict[str, int] = field(default_factory=lambda: {"train": 0, "val": 0})
    skipped_input: int = 0  # article text unusable (serving.model.prompt.check_article)
    invalid: int = 0  # teacher output unusable after all attempts
    failed: int = 0  # teacher errors (timeouts, HTTP) after all attempts
    skipped_unfaithful: int = 0  # target failed serving.model.verifier (codes in ``unfaithful``)
    skipped_extractive: int = 0  # a serve teacher's extractive fallback, not a model summary
    repaired: int = 0  # targets stored after the verifier's repair of their phrasing
    unfaithful: Counter[str] = field(default_factory=Counter)  # failure code -> targets
    retried: int = 0  # extra attempts made
    partial_lines_dropped: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    stories: dict[str, int] = field(default_factory=lambda: {"train": 0, "val": 0})
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["reasons"] = dict(self.reasons.most_common(20))
        data["unfaithful"] = dict(self.unfaithful.most_common())
        return data


# The article's own source, else its feed's title: a training prompt always names a source.
_SQL = f"""
SELECT {ARTICLE_COLUMNS}, f.title AS feed_title
FROM articles a JOIN feeds f ON f.id = a.feed_id
WHERE length(a.text) BETWEEN $1 AND $2
  AND ($3::text IS NULL OR a.language IS NULL OR lower(a.language) LIKE lower($3) || '%')
  AND ($4::timestamptz IS NULL OR a.published_at >= $4)
  AND ($5::timestamptz IS NULL OR a.published_at < $5)
  AND ($6 OR a.duplicate_of IS NULL)
ORDER BY a.id
LIMIT $7
"""


async def fetch_articles(
    conn: asyncpg.Connection | asyncpg.Pool, flt: ArticleFilter
) -> list[Article]:
    rows = await conn.fetch(
        _SQL,
        flt.min_chars,
        flt.max_chars,
        flt.language,
        flt.since,
        flt.until,
        flt.include_duplicates,
        flt.limit,
    )
    return [
        article_from_row(r).model_copy(update={"source": r["source"] or r["feed_title"]})
        for r in rows
    ]


async def _label_with_retries(
    teacher: Teacher, article: Article, retries: int, backoff_s: float, report: Report
) -> Any:
    attempt = 0
    while True:
        try:
            return await teacher.label(article)
        except TeacherError as exc:
            if not exc.retryable or attempt >= retries:
                raise
            attempt += 1
            report.retried += 1
            # exponential backoff with full jitter, so concurrent workers do not stampede
            await asyncio.sleep(random.uniform(0, backoff_s * 2 ** (attempt - 1)))


async def generate(
    articles: list[Article],
    teacher: Teacher,
    out_dir: Path,
    *,
    val_fraction: float = 0.1,
    concurrency: int = 4,
    retries: int = 3,
    backoff_s: float = 1.0,
    seed: str = "newsdesk",
    progress: bool = True,
    min_support: float = DEFAULT_MIN_SUPPORT,
) -> Report:
    """Label ``articles`` with ``teacher`` into ``out_dir``; resumes what is there. Targets
    that fail :func:`serving.model.verifier.check` (at ``min_support``) and a serve teacher's
    extractive fallbacks are dropped and counted (module docstring)."""
    started = time.monotonic()
    report = Report(selected=len(articles))
    writer = PairWriter(out_dir)
    report.partial_lines_dropped = writer.partial_lines_dropped
    done = writer.done_article_ids()
    stories = story_keys(articles)
    todo = [a for a in articles if a.id not in done]
    report.already_done = len(articles) - len(todo)
    for story in set(stories.values()):
        report.stories[split_of(story, val_fraction, seed)] += 1
    semaphore = asyncio.Semaphore(concurrency)
    bar = tqdm(total=len(todo), desc=f"pairs ({teacher.name})", unit="art", disable=not progress)

    async def one(article: Article) -> None:
        try:
            await labelled(article)
        finally:
            bar.update(1)

    async def labelled(article: Article) -> None:
        async with semaphore:
            try:
                check_article(article)
            except InputError as exc:
                report.skipped_input += 1
                report.reasons[f"input: {exc.code}"] += 1
                return
            try:
                label = await _label_with_retries(teacher, article, retries, backoff_s, report)
            except TeacherError as exc:
                bucket = "invalid" if exc.invalid else "failed"
                setattr(report, bucket, getattr(report, bucket) + 1)
                report.reasons[f"{bucket}: {str(exc)[:60]}"] += 1
                log.warning("article %s: %s", article.id, exc)
                return
            if label.extractive_fallback:
                report.skipped_extractive += 1
                log.info("article %s: the teacher served its extractive fallback", article.id)
                return
            summary, verdict = check(label.summary, Evidence.of(article), min_support=min_support)
            if not verdict.passed:
                report.skipped_unfaithful += 1
                report.unfaithful.update(verdict.failures)
                log.info("article %s: target dropped: %s", article.id, "; ".join(verdict.reasons))
                return
            report.repaired += bool(verdict.repairs)
            story = stories[article.id]  # type: ignore[index]
            split = split_of(story, val_fraction, seed)
            record = {
                "article_id": article.id,
                "story": story,
                "split": split,
                "article": article_record(article),
                "target": {"summary": summary, "importance": round(label.importance, 2)},
                "verification": {
                    "version": VERIFIER_VERSION,
                    "min_support": min_support,
                    "support": verdict.support,
                    "repairs": verdict.repairs,
                },
                "teacher": {
                    "name": label.teacher,
                    "model": label.teacher_model,
                    "version": label.teacher_version,
                },
                "prompt_version": PROMPT_VERSION,
                "created_at": datetime.now(UTC).isoformat(),
            }
            await writer.write(record)
            report.written[split] += 1

    try:
        results = await asyncio.gather(*(one(a) for a in todo), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                report.failed += 1
                report.reasons[f"error: {type(result).__name__}: {result}"[:80]] += 1
    finally:
        bar.close()
        writer.close()
        await teacher.aclose()
    report.seconds = round(time.monotonic() - started, 2)
    _write_report(out_dir, report)
    return report


def _write_report(out_dir: Path, report: Report) -> None:
    path = out_dir / "report.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report.as_dict(), indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def training_dir(settings: TrainSettings) -> Path:
    path = (settings.training_dir or settings.resolved_state_dir() / "training").expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def default_pairs_dir(settings: TrainSettings) -> Path:
    return training_dir(settings) / "pairs"


async def run(
    settings: TrainSettings,
    out_dir: Path,
    teacher: Teacher,
    flt: ArticleFilter,
    **kwargs: Any,
) -> Report:
    dsn = await db.resolve_database_url(settings)
    conn = await asyncpg.connect(dsn)
    try:
        await db.migrate(conn)
        articles = await fetch_articles(conn, flt)
    finally:
        await conn.close()
    return await generate(articles, teacher, out_dir, **kwargs)


def _date(value: str) -> datetime:
    parsed = datetime.fromisoformat(value)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m train.generate_training_data", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--teacher", default="lead", choices=["lead", "openai", "serve", "self-verified"]
    )
    parser.add_argument("--teacher-url", help="openai: API base (…/v1); serve: app base URL")
    parser.add_argument("--teacher-model", help="openai: the model name")
    parser.add_argument("--teacher-timeout", type=float, default=60.0, help="seconds per call")
    parser.add_argument(
        "--profile",
        help="model profile whose guard.min_support judges targets (default: MODEL_PROFILE)",
    )
    parser.add_argument("--min-support", type=float, help="overrides the profile's min_support")
    sampled = parser.add_argument_group("self-verified teacher (the profile's model, in-process)")
    sampled.add_argument("--k", type=int, default=4, help="candidates sampled per article")
    sampled.add_argument("--temperature", type=float, default=0.7)
    sampled.add_argument("--top-p", type=float, default=0.9)
    sampled.add_argument("--sample-seed", type=int, default=0, help="seeds every candidate")
    sampled.add_argument("--teacher-adapter", help="sample from this LoRA adapter (a second round)")
    parser.add_argument("--out", type=Path, help="default: STATE_DIR/training/pairs")
    parser.add_argument("--min-chars", type=int, default=200)
    parser.add_argument("--max-chars", type=int, default=100_000)
    parser.add_argument("--language", default="en", help="prefix; '' for any language")
    parser.add_argument("--since", type=_date, help="published at or after (ISO date)")
    parser.add_argument("--until", type=_date, help="published before (ISO date)")
    parser.add_argument("--limit", type=int, help="at most this many articles")
    parser.add_argument("--include-duplicates", action="store_true")
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument("--seed", default="newsdesk", help="salt of the split hash")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--retries", type=int, default=3)
    parser.add_argument("--backoff", type=float, default=1.0, help="first backoff, seconds")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")

    settings = TrainSettings()
    out_dir = args.out or default_pairs_dir(settings)
    min_support = args.min_support
    if min_support is None:
        from serving.model.profiles import load_profile

        min_support = load_profile(args.profile or settings.model_profile).guard.min_support
    engine = None
    if args.teacher == "self-verified":
        from serving.engine import SummarizeEngine

        engine = SummarizeEngine.load(
            args.profile or settings.model_profile, settings, adapter=args.teacher_adapter
        )
    teacher = make_teacher(
        args.teacher,
        url=args.teacher_url or settings.teacher_url,
        model=args.teacher_model or settings.teacher_model,
        api_key=settings.teacher_api_key,
        timeout_s=args.teacher_timeout,
        engine=engine,
        sampling={
            "k": args.k,
            "temperature": args.temperature,
            "top_p": args.top_p,
            "seed": args.sample_seed,
            "batch_articles": max(1, args.concurrency),
        },
    )
    flt = ArticleFilter(
        min_chars=args.min_chars,
        max_chars=args.max_chars,
        language=args.language or None,
        since=args.since,
        until=args.until,
        limit=args.limit,
        include_duplicates=args.include_duplicates,
    )
    report = asyncio.run(
        run(
            settings,
            out_dir,
            teacher,
            flt,
            val_fraction=args.val_fraction,
            concurrency=args.concurrency,
            retries=args.retries,
            backoff_s=args.backoff,
            seed=args.seed,
            progress=not args.no_progress,
            min_support=min_support,
        )
    )
    print(json.dumps(report.as_dict(), indent=2))
    print(f"pairs in {out_dir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
