"""Summary quality on real news: the model alone, the guarded pipeline, and lead baselines.

    python benchmarks/bench_quality.py                    # 300 Lee articles + outside news
    python benchmarks/bench_quality.py --lee 48 --show 5  # quicker; print 5 summaries each
    python benchmarks/bench_quality.py --adapter DIR --exclude-pairs PAIRS/train.jsonl

Corpora (real news, fetched at run time by ``train.corpus``, never committed):
- **Lee**: 300 ABC news articles (2001), no titles (a headline is made from the first words)
  and no reference summaries: ROUGE-L is against the article's first three sentences (lead-3).
- **outside**: the 12 English articles of newspaper4k's test data (CNN, TIME, WIRED, Yonhap,
  FOX13, cleveland.com, ...), with titles; ROUGE-L is against the publisher's own description.

Systems, side by side in one run, on the same articles:
- **model alone**: the engine with its guard off (``guard.mode: off``: the model's parsed
  summary, unverified; what Newsdesk served before the verifier); the verifier judges it here.
- **guarded**: the engine as it ships (``guard.mode: enforce``): repair, verify, retry what does
  not parse, else the extractive fallback; the Result's own report.
- **lead-1 / lead-3**: the article's first one / three sentences.

Figures per system: verifier pass rate, mean content-word support, share with an unsupported
name or number, loop (repetition) rate, meta rate, extractive share, ROUGE-L F1 (x100), mean
words; and the engine's articles/s with the guard off and on, run in alternating chunks so that
both see the same machine, with the guard's own time (``Timings.guard_ms``) as a share.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cluster.settings import Settings  # noqa: E402
from core.article import Article  # noqa: E402
from serving.engine import SummarizeEngine  # noqa: E402
from serving.model import verifier  # noqa: E402
from serving.model.output_parser import split_sentences  # noqa: E402
from serving.model.prompt import clean_text  # noqa: E402
from serving.model.result import Result  # noqa: E402
from train.corpus import headline, lee_articles, outside_news  # noqa: E402


@dataclass
class Corpus:
    name: str
    articles: list[Article]
    references: list[str]
    reference_name: str


@dataclass
class System:
    name: str
    summaries: list[str | None] = field(default_factory=list)  # None: no summary (an error)
    reports: list[verifier.VerifierReport | None] = field(default_factory=list)
    methods: list[str] = field(default_factory=list)


def lead(article: Article, n: int) -> str:
    return " ".join(split_sentences(clean_text(article.text))[:n])


def trained_texts(pairs: Path | None) -> set[str]:
    """Article texts in a training pairs file (their articles are left out: seen in training)."""
    if pairs is None:
        return set()
    from train.pairs import iter_jsonl

    return {
        " ".join(record["article"]["text"].split())
        for _, record, _ in iter_jsonl(pairs)
        if record is not None
    }


def corpora(
    state_dir: Path, lee_count: int, exclude: frozenset[str] | set[str] = frozenset()
) -> list[Corpus]:
    lee = [
        Article(id=i, title=headline(t), text=t, source="ABC")
        for i, t in enumerate(lee_articles(state_dir, lee_count))
        if " ".join(t.split()) not in exclude
    ]
    outside = [
        Article(id=10_000 + i, title=r["title"], text=r["text"], source=r["source"])
        for i, r in enumerate(outside_news(state_dir))
        if r["reference"]
    ]
    refs = [r["reference"] for r in outside_news(state_dir) if r["reference"]]
    return [
        Corpus("Lee (ABC, 2001)", lee, [lead(a, 3) for a in lee], "lead-3"),
        Corpus("outside news (newspaper4k)", outside, refs, "publisher description"),
    ]


def rouge_l(references: list[str], candidates: list[str | None]) -> float:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    scores = [
        scorer.score(r, c)["rougeL"].fmeasure if c else 0.0
        for r, c in zip(references, candidates, strict=True)
    ]
    return 100 * statistics.fmean(scores)


def run_engine(
    engine: SummarizeEngine, articles: list[Article], chunk: int
) -> tuple[System, System, dict[str, float]]:
    """The model alone and the guarded engine on the same articles, in alternating chunks."""
    plain = engine.profile
    off = plain.model_copy(update={"guard": plain.guard.model_copy(update={"mode": "off"})})
    alone, guarded = System("model alone"), System("guarded")
    seconds = {"off": 0.0, "enforce": 0.0, "guard_ms": 0.0}
    for profile in (off, plain):  # first calls set up kernels: not timed
        engine.profile = profile
        engine.summarize(articles[:2])
    for k, start in enumerate(range(0, len(articles), chunk)):
        part = articles[start : start + chunk]
        order = [("off", off), ("enforce", plain)]
        outs: dict[str, list] = {}
        for mode, profile in order if k % 2 == 0 else order[::-1]:
            engine.profile = profile
            began = time.perf_counter()
            outs[mode] = engine.summarize(part)
            seconds[mode] += time.perf_counter() - began
        engine.profile = plain
        for article, o in zip(part, outs["off"], strict=True):
            text = o.summary if isinstance(o, Result) else None
            alone.summaries.append(text)
            ev = verifier.Evidence.of(article)
            alone.reports.append(verifier.verify(text, ev) if text else None)
            alone.methods.append("abstractive" if text else "error")
        for o in outs["enforce"]:
            if isinstance(o, Result):
                guarded.summaries.append(o.summary)
                guarded.reports.append(o.verification)
                guarded.methods.append(o.method)
                seconds["guard_ms"] += o.timings.guard_ms / len(part)  # batch time, shared
            else:
                guarded.summaries.append(None)
                guarded.reports.append(None)
                guarded.methods.append("error")
        print(f"  {start + len(part)}/{len(articles)} articles", file=sys.stderr)
    return alone, guarded, seconds


def baseline(name: str, articles: list[Article], n: int) -> System:
    system = System(name)
    for article in articles:
        text = lead(article, n)
        system.summaries.append(text)
        system.reports.append(verifier.verify(text, verifier.Evidence.of(article)))
        system.methods.append("extractive")
    return system


def figures(system: System, references: list[str]) -> dict[str, float]:
    n = len(system.summaries)
    reports = [r for r in system.reports if r is not None]

    def share(pred) -> float:  # type: ignore[no-untyped-def]
        return 100 * sum(1 for r in system.reports if r is not None and pred(r)) / n

    return {
        "pass_pct": share(lambda r: r.passed),
        "support": statistics.fmean(r.support for r in reports) if reports else 0.0,
        "unsupported_name_or_number_pct": share(
            lambda r: r.unsupported_names or r.unsupported_numbers
        ),
        "loop_pct": share(lambda r: "repetition" in r.failures),
        "meta_pct": share(lambda r: "meta" in r.failures or "too_short" in r.failures),
        "extractive_pct": 100 * system.methods.count("extractive") / n,
        "no_summary_pct": 100 * system.methods.count("error") / n,
        "rougeL": rouge_l(references, system.summaries),
        "words": statistics.fmean(len(s.split()) for s in system.summaries if s),
    }


COLUMNS = (
    ("pass_pct", "pass %", "{:.1f}"),
    ("support", "support", "{:.3f}"),
    ("unsupported_name_or_number_pct", "name/number not in article %", "{:.1f}"),
    ("loop_pct", "loops %", "{:.1f}"),
    ("meta_pct", "meta/empty %", "{:.1f}"),
    ("extractive_pct", "extractive %", "{:.1f}"),
    ("no_summary_pct", "no summary %", "{:.1f}"),
    ("rougeL", "ROUGE-L", "{:.1f}"),
    ("words", "words", "{:.1f}"),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lee", type=int, default=300, help="Lee articles (of 300)")
    parser.add_argument("--profile", default="cpu-small")
    parser.add_argument("--adapter", help="a LoRA adapter folder to serve (default: none)")
    parser.add_argument(
        "--exclude-pairs", type=Path, help="leave out the Lee articles of this train.jsonl"
    )
    parser.add_argument("--chunk", type=int, default=32, help="articles per alternating chunk")
    parser.add_argument("--show", type=int, default=0, help="print N summaries per corpus")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    settings = Settings()
    state = settings.resolved_state_dir()
    print(f"load average before: {os.getloadavg()[0]:.2f}", file=sys.stderr)
    engine = SummarizeEngine.load(args.profile, settings, adapter=args.adapter)
    out: dict[str, object] = {
        "profile": args.profile,
        "model_id": engine.model_id,
        "adapter_id": engine.adapter_id,
    }
    print(f"model {engine.model_id}, adapter {engine.adapter_id}", file=sys.stderr)
    total = {"off": 0.0, "enforce": 0.0, "guard_ms": 0.0, "articles": 0}
    for corpus in corpora(state, args.lee, trained_texts(args.exclude_pairs)):
        alone, guarded, seconds = run_engine(engine, corpus.articles, args.chunk)
        for key in ("off", "enforce", "guard_ms"):
            total[key] += seconds[key]
        total["articles"] += len(corpus.articles)
        systems = [
            alone,
            guarded,
            baseline("lead-1", corpus.articles, 1),
            baseline("lead-3", corpus.articles, 3),
        ]
        rows = {s.name: figures(s, corpus.references) for s in systems}
        out[corpus.name] = rows
        print(
            f"\n### {corpus.name}: {len(corpus.articles)} articles, "
            f"ROUGE-L against the {corpus.reference_name}\n"
        )
        print("| system | " + " | ".join(c[1] for c in COLUMNS) + " |")
        print("|---|" + "---:|" * len(COLUMNS))
        for name, row in rows.items():
            cells = " | ".join(fmt.format(row[key]) for key, _, fmt in COLUMNS)
            print(f"| {name} | {cells} |")
        abstractive = 100 - rows["guarded"]["extractive_pct"] - rows["guarded"]["no_summary_pct"]
        print(f"\nguarded: abstractive share {abstractive:.1f}% (the model's own summaries served)")
        for i in range(min(args.show, len(corpus.articles))):
            article = corpus.articles[i]
            print(f"\n[{i}] {article.title}\n  article: {clean_text(article.text)[:300]}")
            print(f"  model alone: {alone.summaries[i]}")
            print(f"  guarded ({guarded.methods[i]}): {guarded.summaries[i]}")
    n = total["articles"]
    aps_off, aps_on = n / total["off"], n / total["enforce"]
    speed = {
        "articles": n,
        "articles_per_s_guard_off": aps_off,
        "articles_per_s_guarded": aps_on,
        "ratio_guarded_vs_off": aps_on / aps_off,
        "guard_share_of_guarded_time": total["guard_ms"] / 1000 / total["enforce"],
    }
    out["speed"] = speed
    guard_pct = 100 * speed["guard_share_of_guarded_time"]
    print(
        f"\nengine articles/s: guard off {aps_off:.3f} | guarded {aps_on:.3f} | ratio "
        f"{aps_on / aps_off:.3f}x | the guard's own time {guard_pct:.2f}% of the guarded run "
        f"({n} articles, load average after {os.getloadavg()[0]:.2f})"
    )
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
