"""The decode calls: one micro-batch of prompt ids in, generated tokens and ratings out.

Two decoders, one interface (:meth:`Decoder.decode`):

- the engine's own loop, :func:`serving.engine.cpu.decoding.greedy_decode` (greedy, or sampling for
  :meth:`SummarizeEngine.sample`), with the shared-prefix KV cache and, on CPU, each prompt
  prefilled alone into fixed-width slots (batch invariance by construction); it rates each
  summary in the same pass;
- ``model.generate``, when DeepSpeed kernel injection or tensor parallelism replaced the
  model's modules (GPU): they keep their own KV cache, so the rating is a separate forward.

A retry (``retry=True``, the guard's second chance for an unusable output) forbids an empty
answer too and penalises repeating the row's own tokens: deterministic, unlike sampling.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch

from serving.engine.cpu import kernels
from serving.engine.cpu.decoding import (
    DecodeOutput,
    PrefixCache,
    Sampling,
    compute_prefix_cache,
    greedy_decode,
    left_pad,
)
from serving.engine.cpu.slot_decoding import SlotBatch, decode_in_slots
from serving.engine.loading import replaces_modules
from serving.model import prompt
from serving.model.profiles import ModelProfile

RETRY_REPETITION_PENALTY = 1.3


class Decoder:
    """Decodes micro-batches with the model it is :meth:`attach`-ed to."""

    def __init__(self, tokenizer: Any, profile: ModelProfile, device: torch.device) -> None:
        self.tokenizer = tokenizer
        self.device = device
        self.eos_id = int(tokenizer.convert_tokens_to_ids("<|im_end|>"))
        if self.eos_id == tokenizer.unk_token_id:
            self.eos_id = int(tokenizer.eos_token_id)
        self.pad_id = int(
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id
        )
        self.score_ids = prompt.score_token_ids(tokenizer)
        self.rating_suffix = prompt.rating_suffix(tokenizer)
        # Outputs that start by echoing the prompt ("<article>\nTitle: ...") are forbidden
        # from the first token on: the model then starts a summary instead (measured: 2 of 4
        # sampled 512-token Lee prompts echoed otherwise). The retry also forbids eos first.
        self.first_suppress = prompt.echo_start_token_ids(tokenizer)
        self.retry_suppress = sorted({*self.first_suppress, self.eos_id})
        self.uses_generate = replaces_modules(profile)
        self.reuse_prefix = profile.cpu.reuse_prefix_cache
        self.lean_step = profile.cpu.lean_decode_step
        self.step_kernels = profile.cpu.step_kernels
        on_cpu = device.type == "cpu"
        # bf16 weights on CPU: fp32 KV cache, as attention runs in fp32
        # (serving/engine/cpu/attention.py).
        self.cache_dtype = (
            torch.float32 if on_cpu and profile.dtype in ("bfloat16", "float16") else None
        )
        # The slot cache (every greedy CPU decode) holds bf16 where the engine's attention
        # kernels read it (serving/engine/cpu/kernels): keys and values are computed in bf16, so
        # storing them in bf16 is exact, and attention still sums in fp32.
        use_kernels = (
            on_cpu
            and profile.dtype == "bfloat16"
            and profile.cpu.attention_kernels
            and kernels.available()
        )
        self.slot_cache_dtype = torch.bfloat16 if use_kernels else self.cache_dtype
        # CPU: each prompt prefilled alone into fixed-width slots (batch invariance by
        # construction, serving/engine/cpu/decoding.py); GPU: the batch prefilled together.
        self.slots: int | None = None
        if on_cpu:
            prefix = len(prompt.prefix_ids(tokenizer))
            self.slots = profile.max_prompt_tokens - (prefix if self.reuse_prefix else 0)
        self.model: Any = None  # what forward passes call (set by attach)
        self.prefix: PrefixCache | None = None

    def attach(self, model: torch.nn.Module) -> None:
        """Decode with ``model`` from now on (after loading or an adapter change); its
        shared-prefix KV cache is computed again."""
        self.model = model
        self.prefix = None
        if not self.uses_generate and self.reuse_prefix:
            ids = prompt.prefix_ids(self.tokenizer)
            self.prefix = compute_prefix_cache(self.model, ids, self.cache_dtype)

    def slot_batch(self, slots: int, max_new_tokens: int) -> SlotBatch:
        """An empty :class:`~serving.engine.cpu.slot_decoding.SlotBatch` of ``slots`` rows on the
        model attached now (CPU: ``self.slots`` is set), for budgets up to ``max_new_tokens``."""
        assert self.slots is not None, "slot decoding is the CPU path"
        return SlotBatch(
            self.model,
            slots=slots,
            width=self.slots,
            max_new_tokens=max_new_tokens,
            pad_id=self.pad_id,
            eos_id=self.eos_id,
            prefix=self.prefix,
            rating_suffix=self.rating_suffix,
            score_ids=self.score_ids,
            cache_dtype=self.slot_cache_dtype,
            lean=self.lean_step,
            step_kernels=self.step_kernels,
        )

    def text(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def decode(
        self,
        prompts: list[list[int]],
        max_new_tokens: int,
        retry: bool = False,
        sampling: Sampling | None = None,
        min_new_tokens: int = 0,
    ) -> DecodeOutput:
        """Greedy decoding of one micro-batch. ``retry``: also forbid an empty answer and
        penalise repeating the row's own tokens (a deterministic second chance).
        ``sampling``: draw tokens instead (:meth:`SummarizeEngine.sample`; no rating pass).
        ``min_new_tokens`` (benchmarks) forbids the end before that many tokens."""
        suppress_first = self.retry_suppress if retry else self.first_suppress
        penalty = RETRY_REPETITION_PENALTY if retry else 1.0
        if self.uses_generate:
            return self.decode_with_generate(
                prompts, max_new_tokens, suppress_first, penalty, min_new_tokens
            )
        if self.slots is not None and sampling is None:
            # CPU: the slot decoder continuous batching runs on, so that an article gets the
            # same Result from a batch as from the continuous loop
            return decode_in_slots(
                self.slot_batch(len(prompts), max_new_tokens),
                prompts,
                max_new_tokens=max_new_tokens,
                suppress_first=suppress_first,
                min_new_tokens=min_new_tokens,
                repetition_penalty=penalty,
            )
        return greedy_decode(
            self.model,
            prompts,
            pad_id=self.pad_id,
            eos_id=self.eos_id,
            max_new_tokens=max_new_tokens,
            prefix=self.prefix,
            rating_suffix=self.rating_suffix if sampling is None else None,
            score_ids=self.score_ids,
            suppress_first=suppress_first,
            min_new_tokens=min_new_tokens,
            repetition_penalty=penalty,
            slots=self.slots,
            cache_dtype=self.cache_dtype,
            sampling=sampling,
        )

    @torch.inference_mode()
    def decode_with_generate(
        self,
        prompts: list[list[int]],
        max_new_tokens: int,
        suppress_first: Sequence[int] = (),
        repetition_penalty: float = 1.0,
        min_new_tokens: int = 0,
    ) -> DecodeOutput:
        """``model.generate`` path for DeepSpeed kernel injection / tensor parallelism (GPU):
        the injected modules keep their own KV cache, so the rating is a separate forward."""
        ids, mask = left_pad(prompts, self.pad_id)
        width = ids.shape[1]
        started = time.perf_counter()
        out = self.model.generate(
            input_ids=ids.to(self.device),
            attention_mask=mask.to(self.device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=self.eos_id,
            pad_token_id=self.pad_id,
            begin_suppress_tokens=list(suppress_first) or None,
            # transformers' penalty also covers the prompt's tokens (unlike the CPU loop's).
            repetition_penalty=repetition_penalty if repetition_penalty != 1.0 else None,
            min_new_tokens=min_new_tokens or None,
        )
        decode_s = time.perf_counter() - started
        tokens = []
        for row in out[:, width:].tolist():
            seq = []
            for tok in row:
                seq.append(int(tok))
                if tok == self.eos_id:
                    break
            tokens.append(seq)
        started = time.perf_counter()
        rated = []
        for p, seq in zip(prompts, tokens, strict=True):
            tail = seq if seq and seq[-1] == self.eos_id else [*seq, self.eos_id]
            rated.append(p + tail + list(self.rating_suffix))
        r_ids, r_mask = left_pad(rated, self.pad_id)
        logits = self.model(
            input_ids=r_ids.to(self.device),
            attention_mask=r_mask.to(self.device),
            logits_to_keep=1,
        ).logits[:, -1, :]
        probs = torch.softmax(logits[:, self.score_ids].float(), dim=-1).cpu()
        return DecodeOutput(
            tokens=tokens,
            rating_probs=probs,
            prefill_s=0.0,
            decode_s=decode_s,
            rating_s=time.perf_counter() - started,
        )
