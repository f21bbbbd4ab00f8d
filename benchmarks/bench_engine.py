"""Engine throughput beside bare transformers ``generate``, and what each CPU speed-up costs.

    python benchmarks/bench_engine.py                      # all batch sizes + variants
    python benchmarks/bench_engine.py --batch-sizes 8 --variants none

Inputs: 512-token prompts built from the Lee corpus (real ABC articles, fetched at run time by
``train.corpus``; consecutive articles joined until the prompt budget is full), 64 new
tokens each (eos suppressed on both sides so every run decodes exactly 64 tokens).

1. Throughput at batch 1, 4, 8, 16: the engine's ``summarize`` (prompting, decoding, the rating
   pass, the embedding prior, parsing: everything a Result needs) against the bare fp32
   transformers model's ``generate(do_sample=False)`` (its own SDPA attention, no engine code)
   on the same left-padded prompt ids, same process, same threads; the ratio engine / bare.
   And against the runtimes users would pick for speed on a CPU, each when its virtualenv is
   installed: OpenVINO GenAI (the fastest measured here, ../shared/ANCHORS.md;
   ``benchmarks/anchors/setup_openvino.sh``) and vLLM's CPU build (what Ray Serve LLM runs;
   ``benchmarks/anchors/setup_vllm.sh``): same prompt ids, same threads, the engine's compute
   type (bf16 on CPUs with native bf16, else fp32), each run after the engine in a process of
   its own; the ratios engine / anchor are the ones issue 14 targets.
   Then where the engine's time goes at each batch size: prefill, decode (the model's forward
   vs the loop's Python per step), the rating pass, embeddings, and the rest (parsing, the
   verifier, Result assembly).
2. Variants at batch 8 (the engine with one option changed), and the default itself:
   articles/s, ROUGE-L F1 of their summaries against the fp32 engine's (``cpu-small-fp32``) on
   sample articles, and whether each article's result is the same alone as in the batch.

Prints a Markdown table; ``--json PATH`` also writes the figures. Machine load (``uptime``) is
printed before and after: the CPUs are shared, and figures under load are not comparable.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from benchmarks.anchors.openvino_anchor import SETUP, OpenVinoAnchor  # noqa: E402
from benchmarks.anchors.vllm_anchor import SETUP as VLLM_SETUP  # noqa: E402
from benchmarks.anchors.vllm_anchor import VllmAnchor  # noqa: E402
from cluster.settings import Settings  # noqa: E402
from core.article import Article  # noqa: E402
from serving.engine import SummarizeEngine  # noqa: E402
from serving.engine.cpu import lean_step  # noqa: E402
from serving.engine.cpu.decoding import left_pad  # noqa: E402
from serving.model.profiles import cpu_has_native_bf16, load_profile  # noqa: E402
from serving.model.prompt import build_prompt  # noqa: E402
from serving.model.result import Result  # noqa: E402
from train.corpus import headline, lee_articles  # noqa: E402


def load_avg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def long_articles(state_dir: Path, count: int, tokenizer, budget: int) -> list[Article]:  # type: ignore[no-untyped-def]
    """``count`` articles whose prompts fill the whole budget (joined corpus lines)."""
    texts = lee_articles(state_dir)
    out, i = [], 0
    while len(out) < count:
        parts: list[str] = []
        while sum(len(p) for p in parts) < budget * 6:
            parts.append(texts[i % len(texts)])
            i += 1
        article = Article(id=len(out), title=headline(parts[0]), text=" ".join(parts), source="ABC")
        assert len(build_prompt(tokenizer, article, budget).ids) == budget
        out.append(article)
    return out


def sample_articles(state_dir: Path, count: int) -> list[Article]:
    texts = lee_articles(state_dir)
    step = max(1, len(texts) // count)
    return [
        Article(id=1000 + k, title=headline(t), text=t, source="ABC")
        for k, t in enumerate(texts[::step][:count])
    ]


def bare_generate(
    engine: SummarizeEngine, bare: torch.nn.Module, articles: list[Article], new_tokens: int
) -> float:
    """Seconds for transformers' generate on the engine's prompt ids (left-padded)."""
    tok = engine.tokenizer
    started = time.perf_counter()
    prompts = [build_prompt(tok, a, engine.profile.max_prompt_tokens).ids for a in articles]
    ids, mask = left_pad(prompts, engine.decoder.pad_id)
    width = ids.shape[1]
    with torch.inference_mode():
        out = bare.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
        )
    tok.batch_decode(out[:, width:], skip_special_tokens=True)
    return time.perf_counter() - started


def engine_run(engine: SummarizeEngine, articles: list[Article], new_tokens: int) -> float:
    started = time.perf_counter()
    outcomes = engine.summarize(articles, max_new_tokens=new_tokens, min_new_tokens=new_tokens)
    elapsed = time.perf_counter() - started
    assert len(outcomes) == len(articles)
    return elapsed


class Breakdown:
    """Where one ``engine.summarize`` call's time goes. Wraps the decoder's ``decode`` and the
    scorer's ``signals`` (their own timings) and times the model's forward passes with hooks,
    by kind: a decode step feeds one token per row (or runs :mod:`serving.engine.cpu.lean_step`),
    anything else is prefill or rating."""

    def __init__(self, engine: SummarizeEngine) -> None:
        self.engine = engine
        self.reset()
        decode, signals = engine.decoder.decode, engine.scorer.signals

        def timed_decode(*args, **kwargs):  # type: ignore[no-untyped-def]
            out = decode(*args, **kwargs)
            self.prefill += out.prefill_s
            self.decode += out.decode_s
            self.rating += out.rating_s
            self.steps += out.steps
            return out

        engine.decoder.decode = timed_decode  # type: ignore[method-assign]
        engine.scorer.signals = self._timed(signals, "embed")  # type: ignore[method-assign]
        # a decode step's forward is serving.engine.cpu.lean_step's where it applies, else the
        # model's own
        lean_step.decode_logits = self._timed(lean_step.decode_logits, "decode_forward")  # type: ignore[assignment]
        model = engine.adapters.base
        model.register_forward_pre_hook(self._before, with_kwargs=True)
        model.register_forward_hook(self._after, with_kwargs=True)

    def _timed(self, fn, total: str):  # type: ignore[no-untyped-def]
        """``fn``, adding its wall time to the attribute ``total`` at every call."""

        def timed(*args, **kwargs):  # type: ignore[no-untyped-def]
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                setattr(self, total, getattr(self, total) + time.perf_counter() - started)

        return timed

    def reset(self) -> None:
        self.prefill = self.decode = self.rating = self.embed = self.decode_forward = 0.0
        self.steps = 0
        self._started = 0.0
        self._is_step = False

    def _before(self, module, args, kwargs):  # type: ignore[no-untyped-def]
        ids = kwargs.get("input_ids")
        self._is_step = ids is not None and ids.shape[1] == 1
        self._started = time.perf_counter()

    def _after(self, module, args, kwargs, output):  # type: ignore[no-untyped-def]
        if self._is_step:
            self.decode_forward += time.perf_counter() - self._started

    def measure(self, articles: list[Article], new_tokens: int) -> dict[str, float]:
        self.reset()
        total = engine_run(self.engine, articles, new_tokens)
        staged = self.prefill + self.decode + self.rating + self.embed
        steps = max(self.steps, 1)
        return {
            "total_s": total,
            "prefill_s": self.prefill,
            "decode_s": self.decode,
            "decode_step_ms": 1000 * self.decode / steps,
            "python_per_step_ms": 1000 * (self.decode - self.decode_forward) / steps,
            "rating_s": self.rating,
            "embed_s": self.embed,
            "rest_s": total - staged,
        }


def rouge_l(reference: list[str], candidate: list[str]) -> float:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    scores = [
        scorer.score(r, c)["rougeL"].fmeasure for r, c in zip(reference, candidate, strict=True)
    ]
    return statistics.mean(scores)


def lead(article: Article, sentences: int = 3) -> str:
    """The article's first sentences: what a faithful news summary mostly restates."""
    parts = [x.strip() for x in article.text.replace("\n", " ").split(". ") if x.strip()]
    return ". ".join(parts[:sentences])


def summaries(
    engine: SummarizeEngine, articles: list[Article], importances: list[float] | None = None
) -> list[str]:
    out = []
    for start in range(0, len(articles), 8):
        for o in engine.summarize(articles[start : start + 8]):
            out.append(o.summary if isinstance(o, Result) else "")
            if importances is not None and isinstance(o, Result):
                importances.append(o.importance)
    return out


def deciles(values: list[float]) -> str:
    q = statistics.quantiles(values, n=10)
    return (
        f"min {min(values):.0f} | " + " ".join(f"{v:.0f}" for v in q) + f" | max {max(values):.0f}"
    )


def importance_distribution(engine: SummarizeEngine, state: Path, blended: list[float]) -> None:
    """The prior over all corpus articles (cheap) and the blended score of the samples."""
    articles = [Article(text=t) for t in lee_articles(state)]
    priors = [s.prior for s in engine.scorer.signals(articles)]
    print(f"\nimportance prior, all {len(priors)} Lee articles (deciles): {deciles(priors)}")
    if len(blended) >= 2:
        print(f"importance (blend), {len(blended)} sample articles: {deciles(blended)}")


def invariant(engine: SummarizeEngine, articles: list[Article], new_tokens: int) -> bool:
    together = engine.summarize(articles, max_new_tokens=new_tokens)
    alone = [engine.summarize([a], max_new_tokens=new_tokens)[0] for a in articles]
    return [getattr(o, "summary", None) for o in together] == [
        getattr(o, "summary", None) for o in alone
    ]


# name -> (cpu option changes, profile changes), applied to the benchmarked profile
VARIANTS: dict[str, tuple[dict, dict]] = {
    "pytorch-attention": ({"attention_kernels": False}, {}),  # SDPA + matmuls, fp32 cache
    "unpacked": ({"packed_weights": False}, {}),  # bf16: reordered at every call; fp32: MKL
    # both off: the engine before either (on an AVX2 CPU, the fp32 engine of before 2026-11-30)
    "unpacked+pytorch-attention": ({"packed_weights": False, "attention_kernels": False}, {}),
    "no-lean-step": ({"lean_decode_step": False}, {}),  # decode steps through model.forward
    "no-step-kernels": ({"step_kernels": False}, {}),  # lean steps on PyTorch's small ops
    # a bf16 model's prompts on the fp32 attention loops, not in bf16 products (AMX tiles or
    # AVX512-BF16 dot products)
    "fp32-prompt-attention": ({"amx_attention": False, "bf16_attention": False}, {}),
    # a bf16 model's decode steps and ratings on oneDNN's matmuls, not the engine's AMX or
    # AVX512-BF16 kernel (a lone row beside an idle one)
    "onednn-steps": ({"amx_matmul": False, "bf16_matmul": False}, {}),
    # an fp32 engine's weights as loaded, read as fp32 in decode steps (no fp16 rounding)
    "no-fp16-weights": ({"fp16_weights": False}, {}),
    "fp32": ({"fp16_weights": False}, {"dtype": "float32"}),  # the reference: fp32 throughout
    "fp32+fp16-weights": ({}, {"dtype": "float32"}),  # what dtype auto runs without native bf16
    "no-prefix-cache": ({"reuse_prefix_cache": False}, {}),
    "prompt-320": ({}, {"max_prompt_tokens": 320}),
    "prompt-256": ({}, {"max_prompt_tokens": 256}),
    "fp32+int8-decode": ({"int8_decode": True}, {"dtype": "float32"}),
    "fp32+dynamic-int8": ({"dynamic_int8": True}, {"dtype": "float32"}),
}


def load_variant(profile, settings: Settings, name: str) -> SummarizeEngine:  # type: ignore[no-untyped-def]
    cpu_changes, profile_changes = VARIANTS[name]
    options = profile.cpu.model_copy(update=cpu_changes)
    return SummarizeEngine.load(
        profile.model_copy(update={"cpu": options, **profile_changes}), settings
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", default="cpu-small")
    parser.add_argument("--batch-sizes", default="1,4,8,16")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=1, help="runs per point (best kept)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma list or 'none'")
    parser.add_argument("--quality-articles", type=int, default=16)
    parser.add_argument("--state-dir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--anchor",
        choices=("auto", "openvino", "vllm", "none"),
        default="auto",
        help="same-run yardsticks: auto = each of OpenVINO GenAI and vLLM CPU whose virtualenv "
        "is installed; openvino / vllm: that one (an error when it is not installed)",
    )
    args = parser.parse_args()
    profile = load_profile(args.profile)
    # the anchors compute in the engine's type on this CPU: bf16 with native bf16, else fp32
    # (on an AVX2-only CPU both emulate bf16 several times slower: vLLM 0.09-0.11 art/s)
    precision = "bf16" if profile.resolved("cpu").dtype == "bfloat16" else "f32"
    anchors: list[OpenVinoAnchor | VllmAnchor] = []
    for name, anchor_type, setup in (
        ("openvino", OpenVinoAnchor, SETUP),
        ("vllm", VllmAnchor, VLLM_SETUP),
    ):
        if args.anchor not in ("auto", name):
            continue
        candidate = anchor_type(precision=precision)
        if candidate.available():
            anchors.append(candidate)
        elif args.anchor == name:
            parser.error(f"{candidate.label} is not installed: run {setup}")
        else:
            print(f"(no {candidate.label} yardstick: run {setup} to add it)")

    settings = Settings(**({"state_dir": args.state_dir} if args.state_dir else {}))
    state = settings.resolved_state_dir()
    batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b]
    engine = SummarizeEngine.load(profile, settings)
    bare = AutoModelForCausalLM.from_pretrained(engine.model_dir, dtype=torch.float32).eval()
    print(
        f"# engine benchmark  {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"native bf16: {cpu_has_native_bf16()}"
    )
    print(
        f"engine: {engine.model_id}; bare: transformers fp32 generate "
        f"({bare.config._attn_implementation} attention)"
    )
    print(f"load average before: {load_avg()}")
    articles = long_articles(state, max(batch_sizes), engine.tokenizer, profile.max_prompt_tokens)
    engine_run(engine, articles[:1], 4)  # warm-up (first-call allocations)
    bare_generate(engine, bare, articles[:1], 4)

    rows = []
    # retries: first-pass outputs the engine rejected (an echo of the instructions, ...) and
    # decoded again, work the bare baseline does not do (it returns whatever came out).
    print(
        "\n| batch | bare generate (art/s) | engine (art/s) | engine / bare | retries "
        "| engine / bare, first pass only |"
    )
    print("|---:|---:|---:|---:|---:|---:|")
    for b in batch_sizes:
        batch = articles[:b]
        bare_s = min(
            bare_generate(engine, bare, batch, args.new_tokens) for _ in range(args.repeats)
        )
        before, before_s = engine.retries_total, engine.retry_seconds_total
        eng = min(engine_run(engine, batch, args.new_tokens) for _ in range(args.repeats))
        retries = (engine.retries_total - before) / args.repeats
        retry_s = (engine.retry_seconds_total - before_s) / args.repeats
        row = {
            "batch": b,
            "bare_aps": b / bare_s,
            "engine_aps": b / eng,
            "ratio": bare_s / eng,
            "retries": retries,
            "retry_s": retry_s,
            "ratio_first_pass": bare_s / (eng - retry_s),
        }
        rows.append(row)
        print(
            f"| {b} | {row['bare_aps']:.3f} | {row['engine_aps']:.3f} | {row['ratio']:.2f}x "
            f"| {retries:g} ({retry_s:.1f} s) | {row['ratio_first_pass']:.2f}x |",
            flush=True,
        )
    del bare

    prompts = [build_prompt(engine.tokenizer, a, profile.max_prompt_tokens).ids for a in articles]
    for anchor in anchors:
        ran = anchor.run(
            engine.model_dir,
            prompts,
            batch_sizes,
            new_tokens=args.new_tokens,
            repeats=args.repeats,
            threads=torch.get_num_threads(),
        )
        print(f"\n| batch | engine (art/s) | {ran.label} (art/s) | engine / {anchor.short} |")
        print("|---:|---:|---:|---:|")
        for row in rows:
            theirs = ran.aps[row["batch"]]
            row[f"{anchor.short}_aps"] = theirs
            row[f"ratio_{anchor.short}"] = row["engine_aps"] / theirs
            print(
                f"| {row['batch']} | {row['engine_aps']:.3f} | {theirs:.3f} "
                f"| {row['engine_aps'] / theirs:.2f}x |",
                flush=True,
            )

    clock = Breakdown(engine)
    print(
        "\n| batch | total s | prefill s | decode s | ms/step | of it Python ms/step | rating s "
        "| embeddings s | rest s |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        parts = clock.measure(articles[: row["batch"]], args.new_tokens)
        row["breakdown"] = parts
        print(
            f"| {row['batch']} | {parts['total_s']:.2f} | {parts['prefill_s']:.2f} "
            f"| {parts['decode_s']:.2f} | {parts['decode_step_ms']:.1f} "
            f"| {parts['python_per_step_ms']:.1f} | {parts['rating_s']:.2f} "
            f"| {parts['embed_s']:.2f} | {parts['rest_s']:.2f} |",
            flush=True,
        )

    variant_rows = []
    names = [] if args.variants == "none" else [v for v in args.variants.split(",") if v]
    if names:
        samples = sample_articles(state, args.quality_articles)
        fp32 = SummarizeEngine.load(profile.model_copy(update={"dtype": "float32"}), settings)
        reference = summaries(fp32, samples)  # what every row's ROUGE-L is measured against
        del fp32
        # Closeness to fp32 says nothing of which is better; ROUGE-L against each article's
        # lead (first 3 sentences) is a grounding check that needs no reference model.
        leads = [lead(a) for a in samples]
        grounded = rouge_l(leads, reference)
        print(f"\nfp32 engine's summaries, ROUGE-L vs article lead: {grounded:.3f}")
        blended: list[float] = []
        default_summaries = summaries(engine, samples, blended)
        importance_distribution(engine, state, blended)
        bare8 = next((r["bare_aps"] for r in rows if r["batch"] == 8), None)
        default_aps = next((r["engine_aps"] for r in rows if r["batch"] == 8), None)
        print(
            "\n| engine variant (batch 8) | art/s | vs bare fp32 | ROUGE-L vs fp32 engine | "
            "ROUGE-L vs lead | alone == batched | retries |"
        )
        print("|---|---:|---:|---:|---:|---|---:|")
        if default_aps and bare8:
            same = invariant(engine, samples[:4], 32)
            print(
                f"| default ({profile.name}, {engine.profile.dtype}) | {default_aps:.3f} | "
                f"{default_aps / bare8:.2f}x | {rouge_l(reference, default_summaries):.3f} | "
                f"{rouge_l(leads, default_summaries):.3f} | {'yes' if same else 'NO'} | - |",
                flush=True,
            )
        del engine
        examples: list[tuple[str, list[str]]] = [
            ("fp32", reference[:2]),
            ("default", default_summaries[:2]),
        ]
        for name in names:
            variant = load_variant(profile, settings, name)
            engine_run(variant, articles[:1], 4)
            before = variant.retries_total
            eng = min(
                engine_run(variant, articles[:8], args.new_tokens) for _ in range(args.repeats)
            )
            retries = (variant.retries_total - before) / args.repeats
            candidates = summaries(variant, samples)
            score = rouge_l(reference, candidates)
            examples.append((name, candidates[:2]))
            same = invariant(variant, samples[:4], 32)
            aps = 8 / eng
            variant_rows.append(
                {
                    "variant": name,
                    "aps": aps,
                    "rougeL": score,
                    "rougeL_lead": rouge_l(leads, candidates),
                    "invariant": same,
                    "retries": retries,
                }
            )
            ratio = f"{aps / bare8:.2f}x" if bare8 else "-"
            print(
                f"| {name} | {aps:.3f} | {ratio} | {score:.3f} | "
                f"{variant_rows[-1]['rougeL_lead']:.3f} | {'yes' if same else 'NO'} "
                f"| {retries:g} |",
                flush=True,
            )
            del variant
    if names:
        print("\nexample summaries (first two sample articles):")
        for name, texts in examples:
            for text in texts:
                print(f"- {name}: {text}")
    print(f"\nload average after: {load_avg()}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {"throughput": rows, "variants": variant_rows, "load_after": load_avg()}, indent=2
            )
        )


if __name__ == "__main__":
    main()
