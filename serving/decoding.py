"""Batched greedy decoding for the engine: one prefill, a token loop, one rating pass.

Why not ``model.generate``: the engine needs three things generate does not give together,
and they are where the CPU time goes (measured, README "Engine"):

- the KV cache of the prompt prefix every article shares (system message + instruction) is
  computed once per engine and copied into each batch, so prefill runs only on the rest;
- the cache is preallocated for the whole batch (prompt + new tokens + rating suffix), so a
  decode step writes in place instead of concatenating 30 layers' keys and values;
- after the summary, the rating question is appended to the same cache and one short forward
  pass gives the model's score-token probabilities.

The arithmetic is the model's own forward, so with the prefix cache off the tokens equal
``model.generate(do_sample=False)`` on a left-padded batch (a test checks it).

Batch layout: ``[prefix | padding | rest of prompt]`` with the padding masked and position ids
counting attended tokens only, so every row sees exactly what it would see alone (batch
invariance is a test). Rows that reach ``eos`` keep being fed masked padding until the whole
batch stops.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from transformers.cache_utils import Cache, DynamicLayer


class PreallocatedLayer(DynamicLayer):
    """A KV cache layer with a fixed capacity: updates write in place, no concatenation."""

    def __init__(self, capacity: int) -> None:
        super().__init__()
        self.capacity = capacity
        self.length = 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        batch, heads, _, dim = key_states.shape
        self.device = key_states.device
        self.key_buffer = key_states.new_zeros(batch, heads, self.capacity, dim)
        self.value_buffer = value_states.new_zeros(
            batch, value_states.shape[1], self.capacity, value_states.shape[-1]
        )
        self.is_initialized = True

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        new = key_states.shape[-2]
        end = self.length + new
        if end > self.capacity:
            raise RuntimeError(f"KV cache capacity {self.capacity} exceeded ({end})")
        self.key_buffer[:, :, self.length : end] = key_states
        self.value_buffer[:, :, self.length : end] = value_states
        self.length = end
        self.keys = self.key_buffer[:, :, :end]
        self.values = self.value_buffer[:, :, :end]
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length

    def load(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Start from a precomputed prefix (broadcast over the batch)."""
        self.update(keys, values)


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` of token id rows, left-padded to the longest: the
    layout transformers' ``generate`` expects for a batch of prompts."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        if row:
            ids[i, width - len(row) :] = torch.tensor(list(row))
            mask[i, width - len(row) :] = 1
    return ids, mask


def new_cache(num_layers: int, capacity: int) -> Cache:
    return Cache(layers=[PreallocatedLayer(capacity) for _ in range(num_layers)])


@dataclass
class PrefixCache:
    """Keys and values of the shared prompt prefix, one (1, heads, P, dim) pair per layer."""

    ids: tuple[int, ...]
    layers: list[tuple[torch.Tensor, torch.Tensor]]


@dataclass
class DecodeOutput:
    """Per-row generated ids (without padding, ending with eos when reached) and timings."""

    tokens: list[list[int]]
    rating_probs: torch.Tensor | None  # (B, 9) probabilities over the score tokens
    prefill_s: float
    decode_s: float
    rating_s: float
    steps: int = 0
    extra: dict[str, float] = field(default_factory=dict)


def _logits(model: torch.nn.Module, **kwargs: object) -> torch.Tensor:
    out = model(use_cache=True, logits_to_keep=1, **kwargs)
    return out.logits[:, -1, :]


@torch.inference_mode()
def compute_prefix_cache(model: torch.nn.Module, prefix_ids: Sequence[int]) -> PrefixCache:
    device = next(model.parameters()).device
    ids = torch.tensor([list(prefix_ids)], device=device)
    cache = new_cache(model.config.num_hidden_layers, len(prefix_ids))
    model(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1)
    layers = [(layer.keys.clone(), layer.values.clone()) for layer in cache.layers]
    return PrefixCache(ids=tuple(prefix_ids), layers=layers)


@torch.inference_mode()
def greedy_decode(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    *,
    pad_id: int,
    eos_id: int,
    max_new_tokens: int,
    prefix: PrefixCache | None = None,
    rating_suffix: Sequence[int] | None = None,
    score_ids: Sequence[int] | None = None,
    suppress_first: Sequence[int] = (),
    min_new_tokens: int = 0,
    repetition_penalty: float = 1.0,
) -> DecodeOutput:
    """Greedy-decode a batch of prompts (token id lists); see the module docstring.

    ``prefix``: when given, every prompt must start with ``prefix.ids``; its cached keys and
    values are reused. ``rating_suffix`` + ``score_ids``: after decoding, append
    ``[eos if the row did not end with it] + rating_suffix`` and return the softmax over
    ``score_ids`` at the next position. ``suppress_first``: token ids forbidden as the
    first generated token (used by the engine's retry). ``min_new_tokens``: eos is
    forbidden before that many tokens (benchmarks: a fixed amount of work).
    ``repetition_penalty`` > 1: logits of tokens this row already generated (not the
    prompt's: copying facts from the article is wanted) are divided by it (multiplied when
    negative), as in CTRL; the engine's retry uses it against loops.
    """
    device = next(model.parameters()).device
    batch = len(prompts)
    p_len = len(prefix.ids) if prefix is not None else 0
    if prefix is not None:
        for ids in prompts:
            if tuple(ids[:p_len]) != prefix.ids:
                raise ValueError("prompt does not start with the cached prefix")
    rests = [list(ids[p_len:]) for ids in prompts]
    width = max(len(r) for r in rests)
    suffix_len = (len(rating_suffix) + 2) if rating_suffix is not None else 0
    capacity = p_len + width + max_new_tokens + suffix_len

    input_ids = torch.full((batch, width), pad_id, dtype=torch.long)
    mask = torch.zeros((batch, p_len + width), dtype=torch.long)
    mask[:, :p_len] = 1
    for row, rest in enumerate(rests):
        if rest:
            input_ids[row, width - len(rest) :] = torch.tensor(rest)
            mask[row, p_len + width - len(rest) :] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, p_len:]
    input_ids, mask, positions = input_ids.to(device), mask.to(device), positions.to(device)

    cache = new_cache(model.config.num_hidden_layers, capacity)
    if prefix is not None:
        for layer, (keys, values) in zip(cache.layers, prefix.layers, strict=True):
            layer.load(keys.expand(batch, -1, -1, -1), values.expand(batch, -1, -1, -1))

    started = time.perf_counter()
    logits = _logits(
        model, input_ids=input_ids, attention_mask=mask, position_ids=positions, cache=cache
    )
    prefill_s = time.perf_counter() - started

    started = time.perf_counter()
    attended = mask.sum(-1)  # attended tokens per row = position of the next one
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    generated: list[torch.Tensor] = []
    ones = torch.ones((batch, 1), dtype=torch.long, device=device)
    steps = 0
    seen = (
        torch.zeros((batch, logits.shape[-1]), dtype=torch.bool, device=device)
        if repetition_penalty != 1.0
        else None
    )
    for step in range(max_new_tokens):
        if seen is not None and step > 0:
            penalised = torch.where(
                logits > 0, logits / repetition_penalty, logits * repetition_penalty
            )
            logits = torch.where(seen, penalised, logits)
        if step == 0 and suppress_first:
            logits[:, list(suppress_first)] = float("-inf")
        if step < min_new_tokens:
            logits[:, eos_id] = float("-inf")
        next_ids = logits.argmax(-1)
        next_ids = torch.where(done, torch.full_like(next_ids, pad_id), next_ids)
        generated.append(next_ids)
        if seen is not None:
            seen[torch.arange(batch, device=device), next_ids] = True
        steps += 1
        live = ~done
        done = done | (next_ids == eos_id)
        if bool(done.all()) or step == max_new_tokens - 1:
            break
        # Feed the token just produced; rows already finished get masked padding.
        col = live.long().unsqueeze(1)
        mask = torch.cat([mask, col * ones], dim=1)
        logits = _logits(
            model,
            input_ids=next_ids.unsqueeze(1),
            attention_mask=mask,
            position_ids=attended.unsqueeze(1),
            cache=cache,
        )
        attended = attended + live.long()
    decode_s = time.perf_counter() - started

    gen = torch.stack(generated, dim=1).cpu() if generated else torch.empty(batch, 0)
    tokens: list[list[int]] = []
    for row in range(batch):
        seq: list[int] = []
        for tok in gen[row].tolist():
            seq.append(int(tok))
            if tok == eos_id:
                break
        tokens.append(seq)

    rating_probs = None
    rating_s = 0.0
    if rating_suffix is not None and score_ids is not None:
        started = time.perf_counter()
        # The last produced token of still-live rows is not in the cache yet; rows that
        # finished earlier already fed their eos. Then eos (if missing) and the question.
        fed_last = [len(seq) == steps and steps > 0 for seq in tokens]
        extra: list[list[int]] = []
        for row, seq in enumerate(tokens):
            ids: list[int] = [seq[-1]] if fed_last[row] else []
            if not seq or seq[-1] != eos_id:
                ids.append(eos_id)
            extra.append(ids + list(rating_suffix))
        r_width = max(len(e) for e in extra)
        r_ids = torch.full((batch, r_width), pad_id, dtype=torch.long)
        r_mask = torch.zeros((batch, r_width), dtype=torch.long)
        r_pos = torch.zeros((batch, r_width), dtype=torch.long)
        base = attended.cpu()
        for row, ids in enumerate(extra):
            r_ids[row, r_width - len(ids) :] = torch.tensor(ids)
            r_mask[row, r_width - len(ids) :] = 1
            r_pos[row, r_width - len(ids) :] = torch.arange(len(ids)) + int(base[row])
        full_mask = torch.cat([mask, r_mask.to(device)], dim=1)
        logits = _logits(
            model,
            input_ids=r_ids.to(device),
            attention_mask=full_mask,
            position_ids=r_pos.to(device),
            cache=cache,
        )
        rating_probs = torch.softmax(logits[:, list(score_ids)].float(), dim=-1).cpu()
        rating_s = time.perf_counter() - started
    return DecodeOutput(
        tokens=tokens,
        rating_probs=rating_probs,
        prefill_s=prefill_s,
        decode_s=decode_s,
        rating_s=rating_s,
        steps=steps,
    )
