"""SummarizeEngine: articles in, one Result or ArticleError each, in input order.

Used in-process by the Serve deployments, the CLI (``newsdesk summarize``), the benchmark and
training's evaluation::

    engine = SummarizeEngine.load("cpu-small", settings)        # or a ModelProfile
    outcomes = engine.summarize(articles)                         # list[Result | ArticleError]
    engine.set_adapter("/path/to/lora")                           # swap LoRA, base stays loaded
    engine.set_adapter(None)                                      # back to the base model
    engine.sample(articles, k=4)      # k verified samples each (training's self-verified teacher)
    engine.versions                   # model_id, adapter_id, prompt_version of every Result

``summarize`` is synchronous and thread-compatible but not reentrant (one call at a time per
engine; the Serve replica serialises calls). This class only orchestrates its parts, each in
its own module of this package: prompts are built by :mod:`serving.model.prompt`; articles go in
micro-batches of ``max_batch_size``, longest prompt first (:mod:`.batching`); each micro-batch
is decoded (:mod:`.generate`) and judged by the guard (:mod:`.guard`: parse, verify, one retry,
the extractive fallback); the Results are assembled with their importance and timings
(:mod:`.results`). Only an article without a sentence to take ends as ``generation_failed``.
Any exception inside a micro-batch is contained to it: its articles are redone one by one.
Loading and adapters: :mod:`.loading`, :mod:`.adapters`; versions: :mod:`.identity`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from core.article import Article
from serving.engine import identity, loading, result_assembly
from serving.engine.adapters import Adapters
from serving.engine.batching import Pending, contained, micro_batches
from serving.engine.candidates import Candidate, candidate_seed, judge_candidate
from serving.engine.cpu.decoding import Sampling
from serving.engine.generate import Decoder
from serving.engine.guard import Guard, Judged
from serving.engine.importance import ImportanceScorer
from serving.engine.model_source import prepare_model
from serving.model import prompt
from serving.model.profiles import ModelProfile, load_profile
from serving.model.result import ArticleError, Result
from serving.model.versions import Versions
from serving.settings import ServingSettings

log = logging.getLogger(__name__)


class SummarizeEngine:
    """See the module docstring. Build it with :meth:`load`; implements
    :class:`serving.engine.protocol.Engine`."""

    def __init__(
        self,
        profile: ModelProfile,
        settings: ServingSettings,
        model_dir: Path,
        tokenizer: Any,
        base_model: torch.nn.Module,
        scorer: ImportanceScorer,
    ) -> None:
        self.profile = profile
        self.settings = settings
        self.model_dir = model_dir
        self.tokenizer = tokenizer
        self.device = next(base_model.parameters()).device
        self.scorer = scorer
        self.adapters = Adapters(base_model)
        self.decoder = Decoder(tokenizer, profile, self.device)
        self.deepspeed_engine: Any = None  # deepspeed.InferenceEngine when enabled
        self._lock = threading.Lock()
        self._threads = torch.get_num_threads()  # after ServingSettings.engine_threads (load)
        # Outputs regenerated because the first pass was unusable (echo, empty, unparsable):
        # each costs a second decode of its micro-batch's failed rows (benchmarks report it).
        self.retries_total = 0
        self.retry_seconds_total = 0.0
        # Results served, by (method, verdict): what users saw (Summarizer.info, benchmarks).
        self.outcomes: Counter[tuple[str, str]] = Counter()

    # --- construction ----------------------------------------------------------------------

    @classmethod
    def load(
        cls,
        profile: ModelProfile | str | Path | None = None,
        settings: ServingSettings | None = None,
        adapter: str | Path | None = None,
    ) -> SummarizeEngine:
        """Prepare (convert once) and load the profile's model, adapter and scorer."""
        settings = settings or ServingSettings()
        if not isinstance(profile, ModelProfile):
            profile = load_profile(profile or settings.model_profile)
        if settings.engine_threads:
            torch.set_num_threads(settings.engine_threads)
        loading.check_deepspeed(profile)
        device = loading.resolve_device(profile)
        profile = profile.resolved(device.type)
        model_dir = prepare_model(profile, settings)
        tokenizer = loading.load_tokenizer(model_dir)
        model = loading.load_model(model_dir, profile, device)
        scorer = ImportanceScorer(device=str(device))
        engine = cls(profile, settings, model_dir, tokenizer, model, scorer)
        adapter = adapter if adapter is not None else profile.adapter_path
        if adapter:
            engine.adapters.apply(Path(adapter), merge=profile.merge_adapter)
        engine._attach_model()
        return engine

    def _attach_model(self) -> None:
        """DeepSpeed wrapping, CPU options and the shared-prefix cache, after any adapter
        change."""
        model, self.deepspeed_engine = loading.finish(self.adapters.base, self.profile, self.device)
        self.decoder.attach(model)

    def set_adapter(self, adapter: str | Path | None) -> None:
        """Swap the LoRA adapter (a PEFT folder) or remove it (``None``) without reloading
        the base model. With DeepSpeed kernel injection, tensor parallelism, an int8 option or
        a merged adapter (``merge_adapter``) the weights were changed, so the base is reloaded
        instead."""
        with self._lock:
            if loading.changes_weights(self.profile) or self.adapters.merged:
                base = loading.load_model(self.model_dir, self.profile, self.device)
                self.adapters.replace_base(base)
            if adapter is None:
                self.adapters.remove()
            else:
                self.adapters.apply(Path(adapter), merge=self.profile.merge_adapter)
            self._attach_model()

    # --- identity and counters -------------------------------------------------------------

    @property
    def versions(self) -> Versions:
        """What every Result of the engine carries now (:mod:`serving.engine.identity`)."""
        return identity.versions(
            self.profile, self.settings, self.model_dir, self.adapters.adapter_id
        )

    @property
    def model_id(self) -> str:
        return self.versions.model_id

    @property
    def adapter_id(self) -> str | None:
        return self.adapters.adapter_id

    @property
    def prompt_version(self) -> str:
        return self.versions.prompt_version

    @property
    def max_batch_size(self) -> int:
        return self.profile.max_batch_size

    def info(self) -> dict[str, Any]:
        return {
            **self.versions.as_dict(),
            "max_batch_size": self.max_batch_size,
            "summaries": {f"{m}/{v}": n for (m, v), n in sorted(self.outcomes.items())},
            "retries": self.retries_total,
            "retry_s": round(self.retry_seconds_total, 3),
        }

    # --- summarize --------------------------------------------------------------------------

    def summarize(
        self,
        articles: Sequence[Article],
        *,
        max_new_tokens: int | None = None,
        min_new_tokens: int = 0,
    ) -> list[Result | ArticleError]:
        """One Result or ArticleError per article, in input order (see module docstring).

        ``max_new_tokens`` overrides the profile's; ``min_new_tokens`` (benchmarks) forbids
        the end of the summary before that many tokens."""
        with self._lock:
            # OpenMP's thread count is per thread: a caller's thread (the Summarizer's engine
            # thread) starts at OMP_NUM_THREADS, which Ray sets to the actor's CPUs (1), and
            # fp32 matmuls then ran on one core (measured 2x slower; oneDNN's bf16 ones were
            # not affected). Re-apply the engine's count in the calling thread.
            torch.set_num_threads(self._threads)
            budget = max_new_tokens or self.profile.max_new_tokens
            return self._summarize(list(articles), budget, min_new_tokens)

    def _summarize(
        self, articles: list[Article], max_new_tokens: int, min_new_tokens: int
    ) -> list[Result | ArticleError]:
        called = time.perf_counter()
        versions = self.versions
        outcomes: list[Result | ArticleError | None] = [None] * len(articles)
        pending: list[Pending] = []
        for index, article in enumerate(articles):
            try:
                built = prompt.build_prompt(self.tokenizer, article, self.profile.max_prompt_tokens)
            except prompt.InputError as exc:
                outcomes[index] = result_assembly.error(article, exc.code, str(exc), versions)
                continue
            except Exception as exc:  # a tokenizer failure on odd input: that article only
                log.exception("prompt building failed")
                message = f"cannot read: {exc}"
                outcomes[index] = result_assembly.error(article, "invalid_input", message, versions)
                continue
            pending.append(Pending.of(index, article, built))

        guard = self.guard()

        def run(chunk: list[Pending]) -> list[Result | ArticleError]:
            return self._process(chunk, guard, versions, max_new_tokens, min_new_tokens, called)

        def failed(item: Pending, exc: Exception) -> ArticleError:
            message = f"{type(exc).__name__}: {exc}"
            return result_assembly.error(item.article, "internal_error", message, versions)

        size = self.profile.max_batch_size
        for chunk in micro_batches(pending, size, lambda p: len(p.prompt.ids)):
            for item, outcome in zip(chunk, contained(chunk, run, failed), strict=True):
                outcomes[item.index] = outcome
        return [o for o in outcomes if o is not None]

    def guard(self) -> Guard:
        return Guard(
            self.profile.guard,
            budget_tokens=self.profile.max_new_tokens,
            count_tokens=lambda text: len(prompt.encode(self.tokenizer, text)),
            embed=self.scorer.embed,
        )

    def _process(
        self,
        chunk: list[Pending],
        guard: Guard,
        versions: Versions,
        max_new_tokens: int,
        min_new_tokens: int,
        called: float,
    ) -> list[Result | ArticleError]:
        """One micro-batch: decode, judge, retry what the guard asks for, fall back to
        extractive summaries, rate, and assemble the Results."""
        batch_started = time.perf_counter()
        ids = [p.prompt.ids for p in chunk]
        decoded = self.decoder.decode(ids, max_new_tokens, min_new_tokens=min_new_tokens)
        guard_s = 0.0
        started = time.perf_counter()
        probs = decoded.rating_probs.clone() if decoded.rating_probs is not None else None
        judged: list[Judged] = [
            guard.judge(self.decoder.text(tokens), item)
            for tokens, item in zip(decoded.tokens, chunk, strict=True)
        ]
        attempts = [[j] for j in judged]  # every judged output of each row, in order
        failed = guard.to_retry(judged)
        guard_s += time.perf_counter() - started
        if failed:
            self.retries_total += len(failed)
            retry_started = time.perf_counter()
            retry = self.decoder.decode(
                [chunk[r].prompt.ids for r in failed],
                max_new_tokens,
                True,
                min_new_tokens=min_new_tokens,
            )
            self.retry_seconds_total += time.perf_counter() - retry_started
            decoded.prefill_s += retry.prefill_s
            decoded.decode_s += retry.decode_s
            decoded.rating_s += retry.rating_s
            started = time.perf_counter()
            for k, row in enumerate(failed):
                second = guard.judge(self.decoder.text(retry.tokens[k]), chunk[row])
                attempts[row].append(second)
                if guard.prefers_retry(judged[row], second):
                    judged[row] = second
                    if probs is not None and retry.rating_probs is not None:
                        probs[row] = retry.rating_probs[k]
            guard_s += time.perf_counter() - started
        started = time.perf_counter()
        for row, j in enumerate(judged):
            if guard.needs_fallback(j):
                judged[row] = guard.extractive(chunk[row], attempts[row])
        guard_s += time.perf_counter() - started
        started = time.perf_counter()
        signals = self.scorer.signals([p.article for p in chunk])
        embed_s = time.perf_counter() - started
        times = result_assembly.BatchTimes(
            called=called,
            batch_started=batch_started,
            finished=time.perf_counter(),
            prefill_s=decoded.prefill_s,
            decode_s=decoded.decode_s,
            rating_s=decoded.rating_s,
            embed_s=embed_s,
            guard_s=guard_s,
        )
        weights = self.profile.importance.normalised()
        out: list[Result | ArticleError] = []
        for row, item in enumerate(chunk):
            j = judged[row]
            if j.summary is not None:
                self.outcomes[(j.method, j.report.verdict if j.report else "none")] += 1
            rating = probs[row] if probs is not None else None
            out.append(
                result_assembly.outcome(
                    item.article, j, rating, signals[row], weights, versions, times
                )
            )
        return out

    # --- sample -----------------------------------------------------------------------------

    def sample(
        self,
        articles: Sequence[Article],
        *,
        k: int,
        temperature: float = 0.7,
        top_p: float = 0.9,
        seed: int = 0,
        max_new_tokens: int | None = None,
    ) -> list[list[Candidate] | ArticleError]:
        """``k`` sampled summaries of each article, each parsed, repaired and verified (the
        profile's ``min_support``), in seed order; an ArticleError for unusable input.

        Training's self-verified teacher keeps the best that passes. All candidates of all
        articles go through the decode loop together, in micro-batches of the profile's
        size; each row draws from its own generator seeded by :func:`candidate_seed`, so an
        article's candidates do not depend on what they were batched with. Needs the engine's
        own decode loop: not with DeepSpeed kernel injection or tensor parallelism."""
        if self.decoder.uses_generate:
            raise ValueError(
                "sampling candidates needs the engine's decode loop; this profile decodes "
                "with model.generate (DeepSpeed kernel injection / tensor parallelism)"
            )
        with self._lock:
            torch.set_num_threads(self._threads)
            budget = max_new_tokens or self.profile.max_new_tokens
            versions = self.versions
            out: list[list[Candidate] | ArticleError] = []
            rows: list[tuple[Pending, int]] = []
            for index, article in enumerate(articles):
                try:
                    built = prompt.build_prompt(
                        self.tokenizer, article, self.profile.max_prompt_tokens
                    )
                except prompt.InputError as exc:
                    out.append(result_assembly.error(article, exc.code, str(exc), versions))
                    continue
                out.append([])
                item = Pending.of(index, article, built)
                rows += [(item, candidate_seed(seed, article.content_hash, j)) for j in range(k)]
            size = self.profile.max_batch_size
            for chunk in micro_batches(rows, size, lambda r: len(r[0].prompt.ids)):
                decoded = self.decoder.decode(
                    [item.prompt.ids for item, _ in chunk],
                    budget,
                    sampling=Sampling(temperature, top_p, tuple(s for _, s in chunk)),
                )
                for (item, row_seed), tokens in zip(chunk, decoded.tokens, strict=True):
                    text = self.decoder.text(tokens)
                    min_support = self.profile.guard.min_support
                    found = out[item.index]
                    assert isinstance(found, list)
                    found.append(judge_candidate(row_seed, text, item, min_support))
            return out
