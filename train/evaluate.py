"""ROUGE-L of the base model vs an adapter against held-out teacher targets, with the engine.

    python -m train.evaluate --run 3                  # a registry run's adapter on its val pairs
    python -m train.evaluate --adapter DIR --pairs STATE/training/pairs/val.jsonl --limit 24

Each val pair's article is summarized by :class:`serving.engine.SummarizeEngine` (the serving
path: same prompt, same greedy decoding, same parser), once with the bare base model and once
with the adapter; the summaries are scored against the pair's teacher summary with
``rouge-score`` (ROUGE-L F1, stemmed, x100). An article the engine answers with an error scores 0.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from ingestion.article import Article
from ingestion.settings import Settings
from train.pairs import iter_jsonl


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


def _summaries(engine: Any, articles: list[Article]) -> tuple[list[str], int]:
    outcomes = engine.summarize(articles)
    texts = [getattr(o, "summary", "") if o.kind == "result" else "" for o in outcomes]
    return texts, sum(1 for o in outcomes if o.kind != "result")


def rouge_on_pairs(
    profile: Any,
    settings: Settings,
    pairs_file: Path,
    *,
    adapter_dir: Path | None,
    limit: int | None = 32,
    engine: Any = None,
) -> dict[str, Any]:
    """ROUGE-L of the base model and (if given) the adapter on ``pairs_file``'s first pairs."""
    from serving.engine import SummarizeEngine

    pairs = load_eval_pairs(pairs_file, limit)
    if not pairs:
        return {"rouge_pairs": 0}
    articles = [a for a, _ in pairs]
    references = [t for _, t in pairs]
    engine = engine or SummarizeEngine.load(profile, settings)
    engine.set_adapter(None)
    started = time.monotonic()
    base, base_errors = _summaries(engine, articles)
    result: dict[str, Any] = {
        "rouge_pairs": len(pairs),
        "rougeL_base": round(rouge_l(base, references), 2),
        "base_errors": base_errors,
        "base_seconds": round(time.monotonic() - started, 1),
    }
    if adapter_dir is not None:
        engine.set_adapter(adapter_dir)
        started = time.monotonic()
        tuned, tuned_errors = _summaries(engine, articles)
        engine.set_adapter(None)
        result.update(
            {
                "rougeL_adapter": round(rouge_l(tuned, references), 2),
                "adapter_errors": tuned_errors,
                "adapter_seconds": round(time.monotonic() - started, 1),
                "changed_outputs": sum(1 for a, b in zip(base, tuned, strict=True) if a != b),
            }
        )
        result["rougeL_gain"] = round(result["rougeL_adapter"] - result["rougeL_base"], 2)
        result["examples"] = [
            {"reference": r, "base": b, "adapter": t}
            for r, b, t in list(zip(references, base, tuned, strict=True))[:3]
        ]
    return result


async def _run_from_registry(settings: Settings, run_id: int) -> Any:
    import asyncpg

    from ingestion import db
    from train import registry

    conn = await asyncpg.connect(await db.resolve_database_url(settings))
    try:
        await db.migrate(conn)
        return await registry.get_run(conn, run_id)
    finally:
        await conn.close()


async def _record(settings: Settings, run_id: int, patch: dict[str, Any]) -> None:
    import asyncpg

    from ingestion import db
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

    from serving.profiles import load_profile

    settings = Settings()
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
    if "rougeL_adapter" in result:
        print(
            f"ROUGE-L on {result['rouge_pairs']} val pairs: base {result['rougeL_base']:.2f}, "
            f"adapter {result['rougeL_adapter']:.2f} ({result['rougeL_gain']:+.2f})",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
