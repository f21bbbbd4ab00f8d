"""Continuous batching's decode state: a fixed set of slots that articles join and leave
between decode steps.

:func:`serving.engine.cpu.decoding.greedy_decode` runs one batch from its first token to its last: a
row that ends early idles until the longest one ends, and a new article waits for the whole batch.
:class:`SlotBatch` keeps a KV cache of ``slots`` rows of a fixed capacity instead: ``admit``
prefills one prompt into a free row, ``step`` runs one decode step for every active row and
hands back each row that ended (eos or its budget) with its rating, at once; its row is free for
the next article before the following step.

Batch invariance (an article's tokens and rating are the same whoever shares its steps, and
whenever it joined), by construction as in :mod:`serving.engine.cpu.decoding`, plus what joining and
leaving need:

- a row's column layout is fixed: ``[prefix | padding | prompt | generated | rating]``, the
  prompt right-aligned against the same column and the first generated token always at the
  same column, whenever the row was admitted and whatever the others have decoded;
- every decode step attends over the whole capacity, the row's own columns selected by a mask
  (a 4D mask, so transformers builds none): the number of columns, and so the blocking of the
  softmax and of the matmul over them, is the same at every step in any company (a length
  that grows with the batch's progress would give a row other bits depending on when it came);
- prefill runs one row at a time on the row's own slot of the cache
  (:mod:`serving.engine.cpu.decoding`'s arithmetic), and a row's slot is zeroed before it is
  reused; the rating passes of rows that end at one step share their matmuls, each row's bits
  its own (:func:`serving.engine.cpu.lean_step.rows_logits`);
- active rows are rows ``[0, n)``: a row that ends is replaced by the last active one (its keys,
  values and state moved), so a step is one contiguous batch; a lone row steps beside an idle
  row (bf16 gemm vs the gemv of a one-row matmul, see :mod:`serving.engine.cpu.decoding`), except
  where every matmul of a step reads fp16 panels or runs the engine's own bf16 kernel
  (:func:`serving.engine.cpu.packed_linear.steps_read_panels`), whose sums do not depend on the row
  count.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers.cache_utils import Cache

from serving.engine.cpu import lean_step, packed_linear
from serving.engine.cpu.decoding import (
    DecodeOutput,
    PreallocatedLayer,
    PrefixCache,
    _logits,
    rate_row,
    rating_pass,
    rating_probs,
)


class SlotLayer(PreallocatedLayer):
    """One layer's keys and values for all slots. In a decode step (``step_positions`` set)
    each row writes its one new key at its own column and attention reads the whole capacity;
    otherwise (row views for prefill and rating) it behaves as :class:`PreallocatedLayer`."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        super().__init__(keys.shape[2], keys.dtype)
        self.key_buffer, self.value_buffer = keys, values
        self.device = keys.device
        self.is_initialized = True
        self.step_positions: torch.Tensor | None = None  # (n,) columns of the step's tokens
        self.set_length(0)

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        positions = self.step_positions
        if positions is None:
            return super().update(key_states, value_states, *args, **kwargs)
        rows = torch.arange(key_states.shape[0], device=key_states.device)
        self.key_buffer[rows, :, positions] = key_states[:, :, 0].to(self.key_buffer.dtype)
        self.value_buffer[rows, :, positions] = value_states[:, :, 0].to(self.value_buffer.dtype)
        n = key_states.shape[0]
        return self.key_buffer[:n], self.value_buffer[:n]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.capacity, 0


@dataclass
class RowRequest:
    """One prompt to decode. ``suppress_first``: token ids forbidden as the first token;
    ``min_new_tokens``: eos forbidden before that many; ``repetition_penalty`` > 1: the row's
    own generated tokens penalised (as in :func:`serving.engine.cpu.decoding.greedy_decode`)."""

    prompt_ids: Sequence[int]
    max_new_tokens: int
    suppress_first: Sequence[int] = ()
    min_new_tokens: int = 0
    repetition_penalty: float = 1.0
    tag: Any = None  # the caller's, handed back with the row


def choose_token(
    logits: torch.Tensor,
    request: RowRequest,
    generated: int,
    seen: set[int],
    eos_id: int,
    argmax: int | None = None,
) -> int:
    """The next token of a row that has ``generated`` tokens (``seen``: their ids): the argmax
    of its logits after the request's changes (repetition penalty, first-token suppression,
    eos forbidden before ``min_new_tokens``).

    ``argmax``: of the unchanged logits, when already computed for the whole step. It stands
    when none of the changes touches it: they only lower tokens other than it (eos, the
    suppressed first tokens, tokens already generated, penalised by a factor >= 1), and it
    was the first maximum, so it stays the first maximum (exact: the same token as the
    changed logits' argmax)."""
    penalised = request.repetition_penalty != 1.0 and bool(seen)
    if (
        argmax is not None
        and request.repetition_penalty >= 1.0
        and not (penalised and argmax in seen)
        and not (generated == 0 and argmax in request.suppress_first)
        and not (generated < request.min_new_tokens and argmax == eos_id)
    ):
        return argmax
    logits = logits.clone()
    if penalised:
        ids = torch.tensor(sorted(seen), device=logits.device)
        values = logits[ids]
        logits[ids] = torch.where(
            values > 0, values / request.repetition_penalty, values * request.repetition_penalty
        )
    if generated == 0 and request.suppress_first:
        logits[list(request.suppress_first)] = float("-inf")
    if generated < request.min_new_tokens:
        logits[eos_id] = float("-inf")
    return int(logits.argmax(-1))


@dataclass
class RowOutput:
    tag: Any
    tokens: list[int]  # ending with eos when reached
    rating_probs: torch.Tensor | None  # (9,) over the score tokens
    prefill_s: float
    decode_s: float  # from the end of its prefill to its last token (wall, shared steps)
    rating_s: float
    steps: int


@dataclass
class _Row:
    request: RowRequest
    tokens: list[int]
    column: int  # where the next fed token's key goes
    attended: int  # attended tokens = position id of the next fed token
    prefill_s: float
    started: float
    seen: set[int] = field(default_factory=set)


class SlotBatch:
    """See the module docstring. Not thread-safe: one thread (the engine's) drives it."""

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        slots: int,
        width: int,
        max_new_tokens: int,
        pad_id: int,
        eos_id: int,
        prefix: PrefixCache | None = None,
        rating_suffix: Sequence[int] | None = None,
        score_ids: Sequence[int] | None = None,
        cache_dtype: torch.dtype | None = None,
        lean: bool = True,
        step_kernels: bool = True,
    ) -> None:
        self.model = model
        self.slots = max(slots, 2)  # room for the idle row beside a lone one
        self.width = width
        self.max_new_tokens = max_new_tokens
        self.pad_id, self.eos_id = pad_id, eos_id
        self.prefix = prefix
        self.p_len = len(prefix.ids) if prefix is not None else 0
        self.prompt_end = self.p_len + width
        self.rating_suffix = list(rating_suffix) if rating_suffix is not None else None
        self.score_ids = list(score_ids) if score_ids is not None else None
        suffix_len = len(self.rating_suffix) + 2 if self.rating_suffix is not None else 0
        self.capacity = self.prompt_end + max_new_tokens + suffix_len
        config = model.config
        heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        param = next(model.parameters())
        self.device = param.device
        dtype = cache_dtype or param.dtype
        shape = (self.slots, heads, self.capacity, dim)
        self.layers = [
            SlotLayer(
                torch.zeros(shape, dtype=dtype, device=self.device),
                torch.zeros(shape, dtype=dtype, device=self.device),
            )
            for _ in range(config.num_hidden_layers)
        ]
        self.cache = Cache(layers=self.layers)
        # which columns each row attends (a row's prefix, prompt and fed tokens)
        self.mask = torch.zeros((self.slots, self.capacity), dtype=torch.bool, device=self.device)
        self.rows: list[_Row] = []  # active rows, row i in slot i
        self.steps_run = 0
        # decode steps without transformers' glue where the model allows (the same bits)
        self.lean = lean and lean_step.applies(model)
        # and its adds, norms, rotary embeddings and cache writes in C where that is exact here
        self.step_ops = lean_step.step_ops_for(model, dtype) if self.lean and step_kernels else None
        # a lone row steps beside an idle one for oneDNN's sake (its one-row matmul rounds
        # otherwise); where every matmul of a step reads fp16 panels or runs the engine's bf16
        # kernel (AMX or AVX512-BF16), it steps alone
        self.lone_row_alone = packed_linear.steps_read_panels(model)
        # rating passes on a step's bf16 kernel too, whose rows keep their bits in any block
        # (oneDNN's AMX matmuls do not: rows could not share their matmuls)
        self.rates_in_steps = packed_linear.steps_run_bf16_kernel(model)

    # --- admission --------------------------------------------------------------------------

    @property
    def active(self) -> int:
        return len(self.rows)

    @property
    def free(self) -> int:
        """Slots an ``admit`` may take now (with one row active, slot 1 is free: ``slots``
        is at least 2, so a lone row always has its idle neighbour)."""
        return self.slots - len(self.rows)

    @torch.inference_mode()
    def admit(self, request: RowRequest) -> RowOutput | None:
        """Prefill ``request`` into the next free slot. Returns its output at once when it
        ends at its first token (eos first, or a budget of one), else None (it joins the
        next step)."""
        slot = len(self.rows)
        if slot >= self.slots:
            raise RuntimeError("no free slot")
        rest = list(request.prompt_ids[self.p_len :])
        if self.prefix is not None and tuple(request.prompt_ids[: self.p_len]) != self.prefix.ids:
            raise ValueError("prompt does not start with the cached prefix")
        if not rest:
            raise ValueError("a prompt has no tokens after the shared prefix")
        if len(rest) > self.width:
            raise ValueError(f"prompt of {len(request.prompt_ids)} tokens exceeds the slots")
        if request.max_new_tokens > self.max_new_tokens:
            raise ValueError(f"max_new_tokens {request.max_new_tokens} > {self.max_new_tokens}")
        self._clear(slot)
        start = self.prompt_end - len(rest)
        row_mask = self.mask[slot]
        row_mask[: self.p_len] = True
        row_mask[start : self.prompt_end] = True
        started = time.perf_counter()
        positions = torch.arange(self.p_len, self.p_len + len(rest), device=self.device)
        logits = self._row_logits(
            slot,
            start,
            torch.tensor([rest], device=self.device),
            row_mask[: self.prompt_end].long().unsqueeze(0),
            positions.unsqueeze(0),
        )[0]
        prefill_s = time.perf_counter() - started
        row = _Row(
            request=request,
            tokens=[],
            column=self.prompt_end,
            attended=self.p_len + len(rest),
            prefill_s=prefill_s,
            started=time.perf_counter(),
        )
        self.rows.append(row)
        if self._take(slot, row, logits):
            return self._finish([slot])[0]
        return None

    # --- decoding ---------------------------------------------------------------------------

    @torch.inference_mode()
    def step(self) -> list[RowOutput]:
        """One decode step for every active row; the rows that ended, rated, in slot order."""
        n = len(self.rows)
        if n == 0:
            return []
        # a lone row beside an idle one (slot n is free and zeroed), unless it needs none
        batch = n if self.lone_row_alone else max(n, 2)
        ids = torch.full((batch, 1), self.pad_id, dtype=torch.long, device=self.device)
        positions = torch.zeros((batch, 1), dtype=torch.long, device=self.device)
        columns = torch.zeros(batch, dtype=torch.long, device=self.device)
        for i, row in enumerate(self.rows):
            ids[i, 0] = row.tokens[-1]
            positions[i, 0] = row.attended
            columns[i] = row.column
            self.mask[i, row.column] = True
        if batch > n:  # the idle row (slot n, free) attends one column, writes another
            self.mask[n] = False
            self.mask[n, 0] = True
            columns[n] = self.capacity - 1
        for layer in self.layers:
            layer.step_positions = columns
        try:
            mask = self.mask[:batch, None, None, :]
            # fp32 weights rounded to fp16 are read as fp16 in a step (packed_linear.decode_rows)
            with packed_linear.decode_rows():
                if self.lean:  # the same step's bits, without transformers' glue (lean_step)
                    logits = lean_step.decode_logits(
                        self.model, ids, positions, mask, self.layers, self.step_ops
                    )
                else:
                    logits = _logits(
                        self.model,
                        input_ids=ids,
                        attention_mask=mask,
                        position_ids=positions,
                        cache=self.cache,
                    )
        finally:
            for layer in self.layers:
                layer.step_positions = None
        self.steps_run += 1
        # One argmax for the whole step, on fp32 (the same order and ties as bf16's, exact):
        # per row on bf16 it cost ~0.16 ms, 2.6 ms a step at 16 rows; now ~0.25 ms in all.
        # choose_token keeps a row's unless the row's own changes (penalty, ...) touch it.
        choices = logits.float().argmax(-1).tolist()
        ended = []
        for i, row in enumerate(self.rows):
            row.column += 1
            row.attended += 1
            if self._take(i, row, logits[i], choices[i]):
                ended.append(i)
        return self._finish(ended) if ended else []

    def _take(self, slot: int, row: _Row, logits: torch.Tensor, argmax: int | None = None) -> bool:
        """Choose the row's next token (:func:`choose_token`); True when the row has ended."""
        token = choose_token(logits, row.request, len(row.tokens), row.seen, self.eos_id, argmax)
        row.tokens.append(token)
        row.seen.add(token)
        return token == self.eos_id or len(row.tokens) >= row.request.max_new_tokens

    def _finish(self, ended: list[int]) -> list[RowOutput]:
        """Rate the ended rows, free their slots (the last active rows move into them)."""
        ended_at = time.perf_counter()
        ratings, rating_s = {}, 0.0
        if self.rating_suffix is not None and self.score_ids is not None:
            started = time.perf_counter()
            ratings = self._rate(ended)
            # rows rated together share the time: each gets its part
            rating_s = (time.perf_counter() - started) / len(ended)
        outputs = []
        for slot in ended:
            row = self.rows[slot]
            outputs.append(
                RowOutput(
                    tag=row.request.tag,
                    tokens=list(row.tokens),
                    rating_probs=ratings.get(slot),
                    prefill_s=row.prefill_s,
                    decode_s=ended_at - row.started,
                    rating_s=rating_s,
                    steps=len(row.tokens),
                )
            )
        for slot in sorted(ended, reverse=True):
            last = len(self.rows) - 1
            if slot != last:
                self._move(last, slot)
                self.rows[slot] = self.rows[last]
            self.rows.pop()
        return outputs

    def _rate(self, ended: list[int]) -> dict[int, torch.Tensor]:
        """Each ended row's rating, ``(len(score_ids),)`` by slot. On the compiled path the
        rows whose passes have the same length (all but a row with an empty summary) run as
        one batch of matmuls (:func:`serving.engine.cpu.lean_step.rows_logits`: the bits each gets
        alone) where this CPU's matmuls allow it
        (:func:`serving.engine.cpu.lean_step.rates_together`): at 8 rows ending together, one read
        of the weights instead of eight. Where a step's matmuls run on the engine's bf16 kernel the
        passes do too (``rates_in_steps``)."""
        assert self.rating_suffix is not None and self.score_ids is not None
        with self._rating_matmuls():
            return self._rate_rows(ended)

    def shares_rating_matmuls(self, length: int) -> bool:
        """Whether rating passes of ``length`` positions that end together share their
        matmuls here (:func:`serving.engine.cpu.lean_step.rates_together`, on the matmuls they run
        on)."""
        with self._rating_matmuls():
            return lean_step.rates_together(self.model, length)

    def _rating_matmuls(self) -> contextlib.AbstractContextManager:
        """Where rating passes run their matmuls: a step's bf16 kernel (``rates_in_steps``),
        else oneDNN's."""
        return packed_linear.decode_rows() if self.rates_in_steps else contextlib.nullcontext()

    def _rate_rows(self, ended: list[int]) -> dict[int, torch.Tensor]:
        if self.step_ops is None:  # one row at a time, the model over the row's view
            return {
                slot: rate_row(
                    self.model,
                    self._row_view,
                    slot,
                    self.mask[slot : slot + 1].long(),
                    self.rows[slot].tokens,
                    self.prompt_end,
                    self.eos_id,
                    self.rating_suffix,
                    self.score_ids,
                )[0]
                for slot in ended
            }
        passes = {
            slot: rating_pass(
                self.mask[slot : slot + 1].long(),
                self.rows[slot].tokens,
                self.prompt_end,
                self.eos_id,
                self.rating_suffix,
            )
            for slot in ended
        }
        groups: dict[tuple[str, int], list[int]] = {}
        for slot, rated in passes.items():
            length = rated.input_ids.shape[1]
            # one group per length where the matmuls keep each row's bits, else one per row
            together = lean_step.rates_together(self.model, length)
            groups.setdefault(("length", length) if together else ("row", slot), []).append(slot)
        ratings = {}
        for slots in groups.values():
            logits = lean_step.rows_logits(
                self.model,
                torch.cat([passes[slot].input_ids for slot in slots]),
                torch.cat([passes[slot].positions for slot in slots]),
                [passes[slot].mask for slot in slots],
                self.layers,
                slots,
                [passes[slot].kept for slot in slots],
                self.step_ops,
            )
            ratings.update(zip(slots, rating_probs(logits, self.score_ids), strict=True))
        return ratings

    # --- slots ------------------------------------------------------------------------------

    def _clear(self, slot: int) -> None:
        """A slot as new: the shared prefix, nothing else (no bits of a previous article)."""
        for i, layer in enumerate(self.layers):
            layer.key_buffer[slot].zero_()
            layer.value_buffer[slot].zero_()
            if self.prefix is not None:
                keys, values = self.prefix.layers[i]
                layer.key_buffer[slot, :, : self.p_len] = keys[0]
                layer.value_buffer[slot, :, : self.p_len] = values[0]
        self.mask[slot] = False

    def _move(self, source: int, target: int) -> None:
        for layer in self.layers:
            layer.key_buffer[target] = layer.key_buffer[source]
            layer.value_buffer[target] = layer.value_buffer[source]
        self.mask[target] = self.mask[source]

    def _row_logits(
        self,
        slot: int,
        start: int,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
    ) -> torch.Tensor:
        """``(1, vocab)`` logits at the last of one row's prompt positions fed after the row's
        first ``start`` columns, writing their keys and values from there: the compiled lean
        path where it applies (the same bits), else the model over the row's view of the
        cache. (Rating passes: :meth:`_rate`.)"""
        if self.step_ops is not None:
            return lean_step.row_logits(
                self.model,
                input_ids,
                position_ids,
                attention_mask,
                self.layers,
                slot,
                start,
                self.step_ops,
            )
        return _logits(
            self.model,
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=self._row_view(slot, start),
        )

    def _row_view(self, slot: int, length: int) -> Cache:
        return Cache(layers=[layer.row(slot, length) for layer in self.layers])


@torch.inference_mode()
def decode_in_slots(
    batch: SlotBatch,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    suppress_first: Sequence[int] = (),
    min_new_tokens: int = 0,
    repetition_penalty: float = 1.0,
) -> DecodeOutput:
    """A whole micro-batch through an empty ``batch`` of at least ``len(prompts)`` slots (all
    admitted, stepped until every row ended): the engine's batch path on CPU, so that it and
    continuous batching give an article the very same tokens and rating. Rows in input order."""
    outputs: dict[int, RowOutput] = {}
    started = time.perf_counter()
    for index, ids in enumerate(prompts):
        request = RowRequest(
            ids, max_new_tokens, suppress_first, min_new_tokens, repetition_penalty, tag=index
        )
        done = batch.admit(request)
        if done is not None:
            outputs[index] = done
    prefill_s = time.perf_counter() - started
    started = time.perf_counter()
    while batch.active:
        for out in batch.step():
            outputs[out.tag] = out
    elapsed = time.perf_counter() - started
    ordered = [outputs[i] for i in range(len(prompts))]
    rating_s = sum(o.rating_s for o in ordered)
    probs = [o.rating_probs for o in ordered]
    return DecodeOutput(
        tokens=[o.tokens for o in ordered],
        rating_probs=torch.stack(probs) if probs and probs[0] is not None else None,  # type: ignore[arg-type]
        prefill_s=prefill_s,
        decode_s=elapsed - rating_s,
        rating_s=rating_s,
        steps=batch.steps_run,
    )
