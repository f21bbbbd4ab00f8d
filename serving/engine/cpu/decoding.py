"""Batched greedy decoding for the engine: one prefill, a token loop, one rating pass.

Why not ``model.generate``: the engine needs three things generate does not give together,
and they are where the CPU time goes (measured, docs/engine.md). (Over 400 lines: the
batch-invariance argument below spans prefill, the decode loop and the rating pass, and is
kept beside the code it constrains.)

- the KV cache of the prompt prefix every article shares (system message + instruction) is
  computed once per engine and copied into each batch, so prefill runs only on the rest;
- the cache is preallocated for the whole batch (prompt + new tokens + rating suffix), so a
  decode step writes in place instead of concatenating 30 layers' keys and values;
- after the summary, the rating question is appended to the row's cache and one short forward
  pass gives the model's score-token probabilities.

The arithmetic is the model's own forward, so with the prefix cache off the tokens equal
``model.generate(do_sample=False)`` on a left-padded batch (a test checks it).

Batch layout: ``[prefix | padding | rest of prompt | generated]`` with the padding masked and
position ids counting attended tokens only. Rows that reach ``eos`` keep being fed masked
padding until the whole batch stops.

Batch invariance by construction (``slots``, the engine's CPU path): a row's numbers must not
depend on its neighbours, or a rounding difference flips a near-tie in greedy decoding (seen
with bf16 weights: 1 of 8 Lee articles changed its summary alone vs batched). So:

- each prompt is prefilled on its own (no padding in its matmuls or attention) and written
  right-aligned into a prompt region of fixed width, so every decode step sees the same key
  layout alone or in any batch;
- decode attention is computed so that each row gets the same bits at any batch size
  (:mod:`serving.engine.cpu.attention`; PyTorch's CPU SDPA kernel does not);
- bf16 gemm gives a row the same bits at any batch size of 2 or more (measured), but a
  one-row matmul takes a gemv path with other bits: a lone prompt is decoded beside an idle
  row. (fp32 sgemm also blocks differently by batch size, rows ~1e-7 apart: the fp32
  profile keeps summaries but not every last bit of the rating; tested to 0.1.)
- the rating pass runs per row on the row's own slice of the cache, fed the same chunk
  whether the row stopped first or last.

A test checks whole Results of the default (bf16) engine, rating included, bit for bit: alone
== in a mixed batch of 8.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from transformers.cache_utils import Cache, DynamicLayer


class PreallocatedLayer(DynamicLayer):
    """A KV cache layer with a fixed capacity: updates write in place, no concatenation.

    ``dtype``: the dtype keys and values are stored (and attention runs) in, when it differs
    from the model's (bf16 weights keep an fp32 cache: see :mod:`serving.engine.cpu.attention`)."""

    def __init__(self, capacity: int, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.capacity = capacity
        self.length = 0
        self.dtype = dtype

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        batch, heads, _, dim = key_states.shape
        self.device = key_states.device
        dtype = self.dtype or key_states.dtype
        self.key_buffer = key_states.new_zeros(batch, heads, self.capacity, dim, dtype=dtype)
        self.value_buffer = value_states.new_zeros(
            batch, value_states.shape[1], self.capacity, value_states.shape[-1], dtype=dtype
        )
        self.is_initialized = True

    def row(self, index: int, length: int) -> PreallocatedLayer:
        """A one-row view of this layer holding its first ``length`` slots: updates through
        the view write into this layer's buffers (row ``index``, from slot ``length`` on)."""
        view = PreallocatedLayer(self.capacity, self.dtype)
        view.device = self.device
        view.key_buffer = self.key_buffer[index : index + 1]
        view.value_buffer = self.value_buffer[index : index + 1]
        view.is_initialized = True
        view.length = length
        view.keys = view.key_buffer[:, :, :length]
        view.values = view.value_buffer[:, :, :length]
        return view

    def set_length(self, length: int) -> None:
        self.length = length
        self.keys = self.key_buffer[:, :, :length]
        self.values = self.value_buffer[:, :, :length]

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
        self.set_length(end)
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


def new_cache(num_layers: int, capacity: int, dtype: torch.dtype | None = None) -> Cache:
    return Cache(layers=[PreallocatedLayer(capacity, dtype) for _ in range(num_layers)])


def row_cache(cache: Cache, index: int, length: int) -> Cache:
    """Row ``index`` of a preallocated batch cache, first ``length`` slots (a view)."""
    return Cache(layers=[layer.row(index, length) for layer in cache.layers])


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
def compute_prefix_cache(
    model: torch.nn.Module, prefix_ids: Sequence[int], cache_dtype: torch.dtype | None = None
) -> PrefixCache:
    device = next(model.parameters()).device
    ids = torch.tensor([list(prefix_ids)], device=device)
    cache = new_cache(model.config.num_hidden_layers, len(prefix_ids), cache_dtype)
    model(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1)
    layers = [(layer.keys.clone(), layer.values.clone()) for layer in cache.layers]
    return PrefixCache(ids=tuple(prefix_ids), layers=layers)


@dataclass(frozen=True)
class Sampling:
    """Sampled decoding instead of greedy: ``temperature``, nucleus ``top_p``, and one seed
    per prompt. Each row draws from its own ``torch.Generator``, so a row's tokens depend on
    its prompt and seed only, not on what shares its batch."""

    temperature: float
    top_p: float
    seeds: tuple[int, ...]


def _choose(logits: torch.Tensor, sampling: Sampling | None, generators: list) -> torch.Tensor:
    """The next token of each row: the argmax, or a draw from the row's own generator."""
    if sampling is None:
        return logits.argmax(-1)
    chosen = logits.argmax(-1).cpu()
    scaled = (logits.float() / sampling.temperature).softmax(-1).cpu()
    for row, generator in enumerate(generators):
        probs, order = scaled[row].sort(descending=True)
        keep = probs.cumsum(0) - probs < sampling.top_p  # the smallest set reaching top_p
        probs = torch.where(keep, probs, torch.zeros_like(probs))
        chosen[row] = order[torch.multinomial(probs, 1, generator=generator)]
    return chosen.to(logits.device)


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
    slots: int | None = None,
    cache_dtype: torch.dtype | None = None,
    sampling: Sampling | None = None,
) -> DecodeOutput:
    """Greedy-decode a batch of prompts (token id lists); see the module docstring.

    ``prefix``: when given, every prompt must start with ``prefix.ids``; its cached keys and
    values are reused. ``rating_suffix`` + ``score_ids``: after decoding, append
    ``[last token, eos] + rating_suffix`` to each row's cache and return the softmax over
    ``score_ids`` at the next position. ``suppress_first``: token ids forbidden as the
    first generated token (used by the engine's retry). ``min_new_tokens``: eos is
    forbidden before that many tokens (benchmarks: a fixed amount of work).
    ``repetition_penalty`` > 1: logits of tokens this row already generated (not the
    prompt's: copying facts from the article is wanted) are divided by it (multiplied when
    negative), as in CTRL; the engine's retry uses it against loops.
    ``slots``: fixed width of the prompt region after the prefix, each prompt prefilled on its
    own (batch invariance by construction, module docstring); None: the batch's longest
    prompt, all prefilled together (one big matmul: what a GPU wants).
    ``cache_dtype``: dtype of the KV cache when it differs from the model's.
    ``sampling``: draw each token (temperature, top-p, a seed per prompt) instead of the
    argmax: training's self-verified teacher samples candidates this way.
    """
    device = next(model.parameters()).device
    batch = len(prompts)
    p_len = len(prefix.ids) if prefix is not None else 0
    if prefix is not None:
        for ids in prompts:
            if tuple(ids[:p_len]) != prefix.ids:
                raise ValueError("prompt does not start with the cached prefix")
    rests = [list(ids[p_len:]) for ids in prompts]
    longest = max(len(r) for r in rests)
    if slots is not None and longest > slots:
        raise ValueError(f"prompt of {longest + p_len} tokens exceeds {slots + p_len} slots")
    width = slots if slots is not None else longest
    real = batch
    if slots is not None and batch == 1:
        # A one-row matmul takes a gemv path whose bits differ from the gemm that any
        # larger batch gets (measured, bf16 and fp32): decode a lone prompt beside an idle
        # row (never prefilled, finished from the start) so it gets the gemm too.
        batch = 2
        rests.append([])
    suffix_len = (len(rating_suffix) + 2) if rating_suffix is not None else 0
    capacity = p_len + width + max_new_tokens + suffix_len

    input_ids = torch.full((batch, width), pad_id, dtype=torch.long)
    mask = torch.zeros((batch, p_len + width), dtype=torch.long)
    mask[:, :p_len] = 1
    for row, rest in enumerate(rests):
        if rest:
            input_ids[row, width - len(rest) :] = torch.tensor(rest)
            mask[row, p_len + width - len(rest) :] = 1
    mask[real:, p_len + width - 1] = 1  # idle rows attend one (empty) slot: no all-masked row
    positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, p_len:]
    input_ids, mask, positions = input_ids.to(device), mask.to(device), positions.to(device)

    cache = new_cache(model.config.num_hidden_layers, capacity, cache_dtype)
    if prefix is not None:
        for layer, (keys, values) in zip(cache.layers, prefix.layers, strict=True):
            layer.load(keys.expand(batch, -1, -1, -1), values.expand(batch, -1, -1, -1))

    started = time.perf_counter()
    if slots is None:
        logits = _logits(
            model, input_ids=input_ids, attention_mask=mask, position_ids=positions, cache=cache
        )
    else:
        if prefix is None:  # materialise the (empty-prefix) buffers for the row views
            for layer in cache.layers:
                layer.lazy_initialization(*_empty_kv(model, batch, device, cache_dtype))
        rows = []
        for row, rest in enumerate(rests[:real]):
            if not rest:
                raise ValueError("a prompt has no tokens after the shared prefix")
            start = p_len + width - len(rest)
            rows.append(
                _logits(
                    model,
                    input_ids=input_ids[row : row + 1, width - len(rest) :],
                    attention_mask=mask[row : row + 1],
                    position_ids=positions[row : row + 1, width - len(rest) :],
                    cache=row_cache(cache, row, start),
                )
            )
        for layer in cache.layers:
            layer.set_length(p_len + width)
        logits = torch.cat(rows + [torch.zeros_like(rows[0])] * (batch - real))
    prefill_s = time.perf_counter() - started

    started = time.perf_counter()
    attended = mask.sum(-1)  # attended tokens per row = position of the next one
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    done[real:] = True
    generated: list[torch.Tensor] = []
    ones = torch.ones((batch, 1), dtype=torch.long, device=device)
    steps = 0
    generators = []
    if sampling is not None:
        if len(sampling.seeds) != real:
            raise ValueError(f"{len(sampling.seeds)} seeds for {real} prompts")
        generators = [torch.Generator().manual_seed(seed) for seed in sampling.seeds]
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
        next_ids = _choose(logits[:real], sampling, generators)
        if real < batch:  # the idle row
            next_ids = torch.cat([next_ids, next_ids.new_full((batch - real,), pad_id)])
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
    for row in range(real):
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
        rating_probs = _rate(
            model, cache, mask, tokens, p_len + width, eos_id, rating_suffix, score_ids
        )
        rating_s = time.perf_counter() - started
    return DecodeOutput(
        tokens=tokens,
        rating_probs=rating_probs,
        prefill_s=prefill_s,
        decode_s=decode_s,
        rating_s=rating_s,
        steps=steps,
    )


def _empty_kv(
    model: torch.nn.Module, batch: int, device: torch.device, dtype: torch.dtype | None
) -> tuple[torch.Tensor, torch.Tensor]:
    config = model.config
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    dtype = dtype or next(model.parameters()).dtype
    empty = torch.zeros((batch, heads, 0, dim), dtype=dtype, device=device)
    return empty, empty


def _rate(
    model: torch.nn.Module,
    cache: Cache,
    mask: torch.Tensor,
    tokens: list[list[int]],
    prompt_end: int,
    eos_id: int,
    rating_suffix: Sequence[int],
    score_ids: Sequence[int],
) -> torch.Tensor:
    """The rating pass of every row (:func:`rate_row`), ``(B, len(score_ids))``."""
    probs = [
        rate_row(
            model,
            lambda row, length: row_cache(cache, row, length),
            row,
            mask[row : row + 1],
            seq,
            prompt_end,
            eos_id,
            rating_suffix,
            score_ids,
        )
        for row, seq in enumerate(tokens)
    ]
    return torch.cat(probs).cpu()


@dataclass(frozen=True)
class RatingPass:
    """What one row's rating pass feeds (:func:`rating_pass`)."""

    kept: int  # the row's cache columns it keeps: its prompt and its summary but the last token
    input_ids: torch.Tensor  # (1, L): [last token, eos] + rating suffix
    mask: torch.Tensor  # (1, kept + L): the row's 2D attention mask, the fed tokens set
    positions: torch.Tensor  # (1, L)


def rating_pass(
    mask: torch.Tensor,
    seq: list[int],
    prompt_end: int,
    eos_id: int,
    rating_suffix: Sequence[int],
) -> RatingPass:
    """A row's rating pass (``mask``: the row's ``(1, L)`` attention mask, ``seq``: its
    generated tokens). The row keeps the keys of its prompt and of its summary but the last
    token, then is fed ``[last token, eos] + rating_suffix``: the same slots and the same chunk
    whether the row ran alone or beside rows that decoded longer (batch invariance)."""
    device = mask.device
    body = seq[:-1] if seq and seq[-1] == eos_id else seq
    kept = prompt_end + max(len(body) - 1, 0)
    ids = [*body[-1:], eos_id, *rating_suffix]
    row_mask = torch.cat(
        [mask[:, :kept], torch.ones((1, len(ids)), dtype=mask.dtype, device=device)], dim=1
    )
    start = int(mask[0, :kept].sum())
    positions = torch.arange(start, start + len(ids), device=device).unsqueeze(0)
    return RatingPass(kept, torch.tensor([ids], device=device), row_mask, positions)


def rating_probs(logits: torch.Tensor, score_ids: Sequence[int]) -> torch.Tensor:
    """A rating pass's ``(R, vocab)`` logits -> ``(R, len(score_ids))`` probabilities of the
    score tokens, on the CPU."""
    return torch.softmax(logits[:, list(score_ids)].float(), dim=-1).cpu()


def rate_row(
    model: torch.nn.Module,
    row_view: Callable[[int, int], Cache],
    row: int,
    mask: torch.Tensor,
    seq: list[int],
    prompt_end: int,
    eos_id: int,
    rating_suffix: Sequence[int],
    score_ids: Sequence[int],
) -> torch.Tensor:
    """One row's rating pass (:func:`rating_pass`) on the row's own slice of the cache
    (``row_view(row, length)``), ``(1, len(score_ids))`` on the CPU."""
    rated = rating_pass(mask, seq, prompt_end, eos_id, rating_suffix)
    logits = _logits(
        model,
        input_ids=rated.input_ids,
        attention_mask=rated.mask,
        position_ids=rated.positions,
        cache=row_view(row, rated.kept),
    )
    return rating_probs(logits, score_ids)
