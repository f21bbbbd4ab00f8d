"""ROUGE-L and verifier pass rate of the base model vs an adapter on held-out teacher pairs.

    python -m train.evaluate --run 3                  # a registry run's adapter on its val pairs
    python -m train.evaluate --adapter DIR --pairs STATE/training/pairs/val.jsonl --limit 24

Each val pair's article is summarized by :class:`serving.engine.SummarizeEngine` (the serving
path: same prompt, same greedy decoding, same parser), once with the bare base model and once
with the adapter; the summaries are scored against the pair's teacher summary with
``rouge-score`` (ROUGE-L F1, stemmed, x100). An article the engine answers with an error scores 0.

Beside ROUGE-L, each side's summaries are judged by :mod:`serving.model.verifier` (the engine's own
report, at the profile's ``guard.min_support``): ``pass_rate`` (share of pairs whose summary
passes), ``mean_support`` (share of content words found in the article), the shares with
unsupported names and numbers, and the failure codes. These measure the model, not the guard:
the engine is loaded with its guard in ``report`` mode, so every Result is the model's own
summary with its report. With an engine passed in whose guard enforces, an extractive Result
(the fallback served when the model's summaries failed) counts as a fail and scores 0 ROUGE-L,
like an error; with the guard off, the summaries are verified here.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from core.article import Article
from serving.model.verifier import VERIFIER_VERSION, Evidence, VerifierReport, check
from train.pairs import iter_jsonl
from train.settings import TrainSettings


def rouge_l(predictions: list[str], references: list[str]) -> float:
    """Mean ROUGE-L F1 (x100) of aligned predictions and references."""
    from rouge_score import rouge_scorer

    if not references:
        return 0.0
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    total = sum(
        scorer.score(ref, pred)["rougeL"].fmeasure if pred else 0.0
        for pred, ref in zip(predictions, references, strict=True)
    )
    return 100.0 * total / len(references)


def load_eval_pairs(path: Path, limit: int | None = None) -> list[tuple[Article, str]]:
    """``(article, teacher summary)`` of the first ``limit`` usable pairs of a JSONL file."""
    pairs: list[tuple[Article, str]] = []
    for _, record, error in iter_jsonl(Path(path)):
        if error or not record:
            continue
        target = record.get("target")
        summary = target.get("summary") if isinstance(target, dict) else None
        if not isinstance(summary, str) or not summary.strip():
            continue
        try:
            article = Article.model_validate(record.get("article") or {})
        except ValueError:
            continue
        pairs.append((article, summary))
        if limit is not None and len(pairs) >= limit:
            break
    return pairs


def own_summary(
    outcome: Any, article: Article, min_support: float
) -> tuple[str, VerifierReport | None]:
    """The model's own summary in an engine outcome and the verifier's report on it; ``("",
    None)`` when there is none (an error, or an extractive fallback: the model's failed)."""
    if outcome.kind != "result" or getattr(outcome, "method", "abstractive") == "extractive":
        return "", None
    report = getattr(outcome, "verification", None)
    if report is None:  # an engine whose guard is off: verify here
        report = check(outcome.summary, Evidence.of(article), min_support=min_support)[1]
    return outcome.summary, report


def verifier_metrics(reports: list[VerifierReport | None]) -> dict[str, Any]:
    """Pass rate and faithfulness figures of one side's summaries, one report per pair (None:
    no summary of the model's own, a fail). ``pass_rate`` counts over all pairs; the support
    and shares over the ``verified`` summaries."""
    verified = [r for r in reports if r is not None]
    n = len(verified)
    failures: Counter[str] = Counter()
    for report in verified:
        failures.update(report.failures)
    missing = len(reports) - n
    if missing:
        failures["no_summary"] += missing
    return {
        "pass_rate": round(sum(r.passed for r in verified) / len(reports), 4) if reports else 0.0,
        "verified": n,
        "mean_support": round(sum(r.support for r in verified) / n, 4) if n else 0.0,
        "unsupported_names": round(sum(bool(r.unsupported_names) for r in verified) / n, 4)
        if n
        else 0.0,
        "unsupported_numbers": round(sum(bool(r.unsupported_numbers) for r in verified) / n, 4)
        if n
        else 0.0,
        "failures": dict(failures.most_common()),
    }


def _summaries(
    engine: Any, articles: list[Article], min_support: float
) -> tuple[list[str], int, list[VerifierReport | None]]:
    outcomes = engine.summarize(articles)
    judged = [own_summary(o, a, min_support) for o, a in zip(outcomes, articles, strict=True)]
    errors = sum(1 for o in outcomes if o.kind != "result")
    return [text for text, _ in judged], errors, [report for _, report in judged]


def report_mode(profile: Any, settings: TrainSettings | None = None) -> Any:
    """``profile`` (a ModelProfile, a name, or None for the settings' one) with its guard in
    ``report`` mode: the engine then serves the model's own summary, whatever its report."""
    from serving.model.profiles import ModelProfile, load_profile

    if not isinstance(profile, ModelProfile):
        profile = load_profile(profile or (settings or TrainSettings()).model_profile)
    guard = profile.guard.model_copy(update={"mode": "report"})
    return profile.model_copy(update={"guard": guard})


def _side(prefix: str, figures: dict[str, Any]) -> dict[str, Any]:
    return {f"{key}_{prefix}": value for key, value in figures.items()}


def lead3(article: Article) -> str:
    """The article's first three sentences: a reference that needs no teacher."""
    from serving.model.output_parser import split_sentences
    from serving.model.prompt import clean_text

    return " ".join(split_sentences(clean_text(article.text))[:3])


def mean_words(summaries: list[str]) -> float:
    texts = [s for s in summaries if s]
    return round(sum(len(s.split()) for s in texts) / len(texts), 1) if texts else 0.0


def rouge_on_pairs(
    profile: Any,
    settings: TrainSettings,
    pairs_file: Path,
    *,
    adapter_dir: Path | None,
    limit: int | None = 32,
    engine: Any = None,
) -> dict[str, Any]:
    """ROUGE-L and verifier figures (:func:`verifier_metrics`, keys suffixed ``_base`` and
    ``_adapter``) of the base model and (if given) the adapter on ``pairs_file``'s first
    pairs. Without ``engine``, one is loaded with the profile's guard in ``report`` mode."""
    from serving.engine import SummarizeEngine

    pairs = load_eval_pairs(pairs_file, limit)
    if not pairs:
        return {"rouge_pairs": 0}
    articles = [a for a, _ in pairs]
    references = [t for _, t in pairs]
    leads = [lead3(a) for a in articles]
    engine = engine or SummarizeEngine.load(report_mode(profile, settings), settings)
    guard = engine.profile.guard
    engine.set_adapter(None)
    started = time.monotonic()
    base, base_errors, base_reports = _summaries(engine, articles, guard.min_support)
    result: dict[str, Any] = {
        "rouge_pairs": len(pairs),
        "rougeL_base": round(rouge_l(base, references), 2),
        "rougeL_lead3_base": round(rouge_l(base, leads), 2),
        "words_base": mean_words(base),
        "base_errors": base_errors,
        "base_seconds": round(time.monotonic() - started, 1),
        "verifier": {
            "version": VERIFIER_VERSION,
            "min_support": guard.min_support,
            "guard_mode": guard.mode,
        },
        **_side("base", verifier_metrics(base_reports)),
    }
    if adapter_dir is not None:
        engine.set_adapter(adapter_dir)
        started = time.monotonic()
        tuned, tuned_errors, tuned_reports = _summaries(engine, articles, guard.min_support)
        engine.set_adapter(None)
        result.update(
            {
                "rougeL_adapter": round(rouge_l(tuned, references), 2),
                "rougeL_lead3_adapter": round(rouge_l(tuned, leads), 2),
                "words_adapter": mean_words(tuned),
                "adapter_errors": tuned_errors,
                "adapter_seconds": round(time.monotonic() - started, 1),
                "changed_outputs": sum(1 for a, b in zip(base, tuned, strict=True) if a != b),
                **_side("adapter", verifier_metrics(tuned_reports)),
            }
        )
        result["rougeL_gain"] = round(result["rougeL_adapter"] - result["rougeL_base"], 2)
        result["pass_rate_gain"] = round(result["pass_rate_adapter"] - result["pass_rate_base"], 4)

        def verdict(report: VerifierReport | None) -> list[str]:
            return ["no_summary"] if report is None else report.failures

        result["examples"] = [
            {
                "reference": r,
                "base": b,
                "adapter": t,
                "base_failures": verdict(br),
                "adapter_failures": verdict(tr),
            }
            for r, b, t, br, tr in list(
                zip(references, base, tuned, base_reports, tuned_reports, strict=True)
            )[:3]
        ]
    return result


def describe(result: dict[str, Any]) -> str:
    """One line per side: ROUGE-L and the verifier's pass rate (printed by ``main``)."""
    if not result.get("rouge_pairs"):
        return "no usable val pairs"
    lines = [f"{result['rouge_pairs']} val pairs"]
    for side in ("base", "adapter"):
        if f"rougeL_{side}" not in result:
            continue
        lines.append(
            f"{side:>7}: ROUGE-L {result[f'rougeL_{side}']:.2f} "
            f"(vs lead-3 {result[f'rougeL_lead3_{side}']:.2f}), "
            f"{result[f'words_{side}']:.0f} words, "
            f"verifier pass {100 * result[f'pass_rate_{side}']:.0f}%, "
            f"support {result[f'mean_support_{side}']:.2f}, "
            f"unsupported names {100 * result[f'unsupported_names_{side}']:.0f}%, "
            f"numbers {100 * result[f'unsupported_numbers_{side}']:.0f}%"
        )
    if "rougeL_gain" in result:
        lines.append(
            f"   gain: ROUGE-L {result['rougeL_gain']:+.2f}, "
            f"pass rate {100 * result['pass_rate_gain']:+.0f} points"
        )
    return "\n".join(lines)


async def _run_from_registry(settings: TrainSettings, run_id: int) -> Any:
    import asyncpg

    from core import db
    from train import registry

    conn = await asyncpg.connect(await db.resolve_database_url(settings))
    try:
        await db.migrate(conn)
        return await registry.get_run(conn, run_id)
    finally:
        await conn.close()


async def _record(settings: TrainSettings, run_id: int, patch: dict[str, Any]) -> None:
    import asyncpg

    from core import db
    from train import registry

    conn = await asyncpg.connect(await db.resolve_database_url(settings))
    try:
        await registry.update_metrics(conn, run_id, patch)
    finally:
        await conn.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m train.evaluate", description=__doc__.split("\n")[0]
    )
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--run", type=int, help="a registry run id: its adapter and val pairs")
    which.add_argument("--adapter", type=Path, help="a PEFT adapter folder")
    parser.add_argument("--pairs", type=Path, help="pairs JSONL (default: the run's val file)")
    parser.add_argument("--profile", help="model profile (default: the run's, else cpu-small)")
    parser.add_argument("--limit", type=int, default=32, help="pairs to score (default 32)")
    parser.add_argument(
        "--record", action="store_true", help="with --run: store the figures in the registry"
    )
    args = parser.parse_args(argv)

    from serving.model.profiles import load_profile

    settings = TrainSettings()
    profile_name = args.profile
    adapter_dir = args.adapter
    pairs_file = args.pairs
    if args.run is not None:
        run = asyncio.run(_run_from_registry(settings, args.run))
        adapter_dir = Path(run.adapter_path) if run.adapter_path else None
        profile_name = profile_name or run.profile
        pairs_file = pairs_file or Path(run.data["val"]["path"])
    if pairs_file is None:
        parser.error("--pairs is needed with --adapter")
    profile = load_profile(profile_name or settings.model_profile)
    result = rouge_on_pairs(
        profile, settings, pairs_file, adapter_dir=adapter_dir, limit=args.limit
    )
    print(json.dumps(result, indent=2))
    if args.record and args.run is not None:
        patch = {k: v for k, v in result.items() if k != "examples"}
        asyncio.run(_record(settings, args.run, patch))
    print(describe(result), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
