"""How far an engine change moves what readers get: the served Results of the engine as
configured against the same engine with CPU options changed, on real news, same run.

    python benchmarks/engine_distance.py --set attention_kernels=false
    python benchmarks/engine_distance.py --set attention_kernels=false,packed_weights=false --lee 48

Issue 14 asks every speed change that is not bit-exact to report its summaries' distance from
the engine before it. Articles: the Lee corpus (ABC, 2001) and the outside-news set
(newspaper4k's test articles), at their natural length, in batches of 8, both engines loaded
side by side and run in alternating chunks. Printed per corpus:

- how many served summaries and importances are identical;
- ROUGE-L F1 (x100) between the two sides' summaries, over all articles and over the changed
  ones, and each side's against the article's lead-3 (a grounding check);
- verifier pass counts (a served abstractive summary passed the verifier; otherwise the
  extractive fallback was served) and the discordant pairs: passed on one side only. An
  exact binomial (McNemar) p-value says whether the split of those pairs is more lopsided
  than a coin would make it: a change of rounding perturbs greedy decoding at near-ties, and
  which side such a perturbation favours is chance unless the change is systematic.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.bench_quality import corpora, rouge_l  # noqa: E402
from cluster.settings import Settings  # noqa: E402
from serving.engine import SummarizeEngine  # noqa: E402
from serving.model.profiles import load_profile  # noqa: E402
from serving.model.result import Result  # noqa: E402


def parse_changes(text: str) -> dict[str, bool | int | float | str]:
    changes: dict[str, bool | int | float | str] = {}
    for item in filter(None, text.split(",")):
        key, _, raw = item.partition("=")
        value: bool | int | float | str = raw
        if raw.lower() in ("true", "false"):
            value = raw.lower() == "true"
        else:
            try:
                value = float(raw) if "." in raw else int(raw)
            except ValueError:
                pass
        changes[key.strip()] = value
    return changes


def binomial_p(k: int, n: int) -> float:
    """Two-sided exact p of a split at least as lopsided as k of n under a fair coin."""
    if n == 0:
        return 1.0
    low = min(k, n - k)
    tail = sum(math.comb(n, i) for i in range(low + 1)) / 2**n
    return min(1.0, 2 * tail)


def served(outcomes: list) -> list[tuple[str | None, float | None, bool]]:  # type: ignore[type-arg]
    rows = []
    for o in outcomes:
        if isinstance(o, Result):
            rows.append((o.summary, o.importance, o.method == "abstractive"))
        else:
            rows.append((None, None, False))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--set", required=True, help="cpu options of the other side: a=b,c=d")
    parser.add_argument("--profile", default="cpu-small")
    parser.add_argument("--lee", type=int, default=300, help="Lee articles (of 300)")
    parser.add_argument("--chunk", type=int, default=32)
    parser.add_argument("--show", type=int, default=3, help="changed summaries to print")
    args = parser.parse_args()

    settings = Settings()
    profile = load_profile(args.profile)
    changes = parse_changes(args.set)
    other = profile.model_copy(update={"cpu": profile.cpu.model_copy(update=changes)})
    engines = {
        "configured": SummarizeEngine.load(profile, settings),
        f"with {args.set}": SummarizeEngine.load(other, settings),
    }
    names = list(engines)
    print(f"# engine distance: {names[0]} ({profile.name}) vs {names[1]}")
    for corpus in corpora(settings.resolved_state_dir(), args.lee):
        articles = corpus.articles
        results: dict[str, list] = {name: [] for name in names}  # type: ignore[type-arg]
        for k, start in enumerate(range(0, len(articles), args.chunk)):
            part = articles[start : start + args.chunk]
            for name in names if k % 2 == 0 else names[::-1]:
                engine = engines[name]
                for batch in range(0, len(part), 8):
                    results[name].extend(served(engine.summarize(part[batch : batch + 8])))
            print(f"  {start + len(part)}/{len(articles)}", file=sys.stderr)
        a, b = results[names[0]], results[names[1]]
        same = [x[0] == y[0] for x, y in zip(a, b, strict=True)]
        changed = [i for i, s in enumerate(same) if not s]
        leads = corpus.references if corpus.reference_name == "lead-3" else None
        only_a = sum(1 for x, y in zip(a, b, strict=True) if x[2] and not y[2])
        only_b = sum(1 for x, y in zip(a, b, strict=True) if y[2] and not x[2])
        print(f"\n## {corpus.name}: {len(articles)} articles")
        print("| figure | value |\n|---|---:|")
        print(f"| summaries identical | {sum(same)} / {len(same)} |")
        print(
            f"| importances identical | "
            f"{sum(1 for x, y in zip(a, b, strict=True) if x[1] == y[1])} / {len(same)} |"
        )
        between = rouge_l([x[0] or "" for x in a], [y[0] for y in b])
        print(f"| ROUGE-L between sides, all | {between:.1f} |")
        if changed:
            print(
                f"| ROUGE-L between sides, changed only | "
                f"{rouge_l([a[i][0] or '' for i in changed], [b[i][0] for i in changed]):.1f} |"
            )
        for name, rows in results.items():
            print(f"| verifier passes, {name} | {sum(r[2] for r in rows)} |")
            if leads:
                print(f"| ROUGE-L vs lead-3, {name} | {rouge_l(leads, [r[0] for r in rows]):.1f} |")
        print(
            f"| passed on one side only ({names[0]} / {names[1]}) | {only_a} / {only_b} "
            f"(McNemar p = {binomial_p(only_a, only_a + only_b):.2f}) |"
        )
        importances = [
            abs(x[1] - y[1])
            for x, y in zip(a, b, strict=True)
            if x[1] is not None and y[1] is not None
        ]
        if importances:
            print(f"| importance, mean abs difference | {statistics.fmean(importances):.4f} |")

        # which each side served: the model's summary (it passed the verifier) or the
        # extractive fallback (it did not), so that a reader can judge what changed
        def method(row: tuple) -> str:  # type: ignore[type-arg]
            return "model" if row[2] else "extractive"

        for i in changed[: args.show]:
            print(
                f"\n- {names[0]} ({method(a[i])}): {a[i][0]}"
                f"\n- {names[1]} ({method(b[i])}): {b[i][0]}"
            )


if __name__ == "__main__":
    main()
