"""A LLaMA decode step without transformers' module tree around the arithmetic.

On a 2-core CPU a decode step of the 135M model is short (~50 ms at one row on the AMX
Xeon of 2026-12-01, of which the matmuls ~16-25 ms), and transformers' code around each
layer's arithmetic runs at every step: per layer three ``deprecate_kwarg`` wrappers, the
gradient-checkpointing layer's ``__call__``, kwargs plumbed through four levels, the
attention-interface lookup; per step the model's mask builder and output capture.
:func:`decode_logits` runs the same step as ``LlamaForCausalLM.forward`` over the slot cache,
calling the same modules and functions in the same order on the same tensors (embedding,
rotary table, each layer's norms, projections, ``apply_rotary_pos_emb``, the cache's
``update``, the engine's attention, the MLP, the final norm and the output layer on the last
position), so its logits and the keys and values it writes are the model's bits (tested at
every step of a run, ``tests/serving/engine/test_continuous_batching.py``), only without the glue:
1.04x per step at 1, 8 and 16 rows (the two paths on the same steps, alternating which runs
first).

Owning the step is also what lets the engine replace PyTorch's ~30 small ops a layer around the
matmuls (residual adds, RMSNorms, rotary embeddings, cache writes) with three calls into C
(:mod:`serving.engine.cpu.kernels.step_ops`, ``cpu.step_kernels``) that give the same bits: the
step's logits and cache writes stay the model's, tested the same way.

The projections are still called as modules, so PEFT's LoRA layers (which replace them in
place) and packed weights (:mod:`serving.engine.cpu.packed_linear`) apply unchanged. A model that is
not plain LLaMA (another architecture, DeepSpeed's injected kernels) or not on the engine's
attention takes the model's own forward: :func:`applies` says which.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from transformers import activations
from transformers.models.llama import modeling_llama

from serving.engine.cpu import attention, kernels, packed_linear
from serving.engine.cpu.kernels import step_ops

# activation modules whose forward is F.silu on its input: the step calls F.silu itself
_SILU = tuple(
    t for t in (torch.nn.SiLU, getattr(activations, "SiLUActivation", None)) if t is not None
)
# the engine's attention functions by the name the model is switched to
# (serving.engine.cpu.attention)
_ATTENTION = {
    attention.NAME: attention.engine_attention,
    attention.NAME_PYTORCH: attention.pytorch_attention,
}


def applies(model: torch.nn.Module) -> bool:
    """The model is transformers' LLaMA as loaded (decoder layers of the library's own class)
    on one of the engine's attention functions (:mod:`serving.engine.cpu.attention`)."""
    if type(model) is not modeling_llama.LlamaForCausalLM:
        return False
    if model.config._attn_implementation not in _ATTENTION:
        return False
    inner = model.model
    return type(inner) is modeling_llama.LlamaModel and all(
        type(layer) is modeling_llama.LlamaDecoderLayer
        and type(layer.self_attn) is modeling_llama.LlamaAttention
        for layer in inner.layers
    )


@torch.inference_mode()
def decode_logits(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    position_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    layers: Sequence,
    ops: step_ops.StepOps | None = None,
) -> torch.Tensor:
    """``(B, vocab)`` logits of one decode step: ``input_ids`` and ``position_ids`` ``(B, 1)``,
    ``attention_mask`` the ``(B, 1, 1, L)`` bool mask over the cache, ``layers`` the cache's
    layers (their ``update`` writes the step's keys and values and returns what to attend).
    ``ops``: the compiled step operations (:func:`step_ops_for`), None for PyTorch's."""
    if ops is not None:
        return _decode_logits_compiled(model, input_ids, position_ids, attention_mask, layers, ops)
    inner = model.model
    attend = _ATTENTION[model.config._attn_implementation]
    hidden = inner.embed_tokens(input_ids)
    cos, sin = inner.rotary_emb(hidden, position_ids=position_ids)
    rows = hidden.shape[0]
    for decoder, cache_layer in zip(inner.layers, layers, strict=True):
        attn = decoder.self_attn
        residual = hidden
        hidden = decoder.input_layernorm(hidden)
        shape = (rows, 1, -1, attn.head_dim)
        query = attn.q_proj(hidden).view(shape).transpose(1, 2)
        key = attn.k_proj(hidden).view(shape).transpose(1, 2)
        value = attn.v_proj(hidden).view(shape).transpose(1, 2)
        query, key = modeling_llama.apply_rotary_pos_emb(query, key, cos, sin)
        key, value = cache_layer.update(key, value)
        out, _ = attend(attn, query, key, value, attention_mask, scaling=attn.scaling)
        hidden = residual + attn.o_proj(out.reshape(rows, 1, -1).contiguous())
        residual = hidden
        hidden = residual + decoder.mlp(decoder.post_attention_layernorm(hidden))
    hidden = inner.norm(hidden)
    return model.lm_head(hidden[:, -1:, :])[:, -1, :]


def step_ops_for(model: torch.nn.Module, cache_dtype: torch.dtype) -> step_ops.StepOps | None:
    """The compiled step operations for a model :func:`applies` to, on the engine's kernels
    (attention over a cache of the model's dtype), where they are built and give PyTorch's bits
    here (:func:`serving.engine.cpu.kernels.step_ops.load`); else None."""
    if not applies(model) or model.config._attn_implementation != attention.NAME:
        return None
    if not step_ops.handles(model, cache_dtype) or kernels.load() is None:
        return None
    # the compiled forward computes the MLP itself (LlamaMLP.forward's arithmetic)
    if any(type(layer.mlp) is not modeling_llama.LlamaMLP for layer in model.model.layers):
        return None
    return step_ops.load()


def _decode_logits_compiled(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    position_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    layers: Sequence,
    ops: step_ops.StepOps,
) -> torch.Tensor:
    """:func:`decode_logits` with a layer's adds, norms, rotary embeddings and cache writes in
    C: row ``i`` writes at its column (``step_positions``) of slot ``i``, and attends its
    masked columns of the whole capacity."""
    rows = input_ids.shape[0]

    def attend(attn, query, cache_layer):  # type: ignore[no-untyped-def]
        keys, values = cache_layer.key_buffer[:rows], cache_layer.value_buffer[:rows]
        return _attention(kernels.decode_attention, attn, query, keys, values, attention_mask)

    columns = layers[0].step_positions

    def store(query, key, value, cos, sin, cache_layer, head_dim):  # type: ignore[no-untyped-def]
        caches = cache_layer.key_buffer, cache_layer.value_buffer
        return ops.rope_store(query, key, value, cos, sin, *caches, columns, head_dim)

    hidden = _compiled_forward(model, input_ids, position_ids, layers, ops, store, attend)
    return model.lm_head(hidden[:, -1:, :])[:, -1, :]


@torch.inference_mode()
def row_logits(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    position_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    layers: Sequence,
    slot: int,
    start: int,
    ops: step_ops.StepOps,
) -> torch.Tensor:
    """``(1, vocab)`` logits at the last of one row's new positions (a prompt after the shared
    prefix, a rating pass), fed after the first ``start`` columns of slot ``slot`` of the slot
    cache ``layers``, whose keys and values they write from column ``start`` on: the model
    forward over the row's view of the cache (serving.engine.cpu.slot_decoding), with its adds,
    norms, rotary embeddings and cache writes compiled as in a decode step. ``input_ids`` and
    ``position_ids`` ``(1, L)``; ``attention_mask`` the row's ``(1, start + L)`` 2D mask.
    The attention mask is transformers' for that input: a query at column ``start + i`` sees the
    columns up to its own that the row's mask sets."""
    return rows_logits(
        model, input_ids, position_ids, [attention_mask], layers, [slot], [start], ops
    )


@torch.inference_mode()
def rows_logits(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    position_ids: torch.Tensor,
    attention_masks: Sequence[torch.Tensor],
    layers: Sequence,
    slots: Sequence[int],
    starts: Sequence[int],
    ops: step_ops.StepOps,
) -> torch.Tensor:
    """:func:`row_logits` of several rows at once, each as if alone: ``(R, vocab)``, row ``i``
    fed ``input_ids[i]`` at ``position_ids[i]`` (``(R, L)``, the same ``L`` for all: rating
    passes) after the first ``starts[i]`` columns of slot ``slots[i]``, under its
    ``(1, starts[i] + L)`` mask ``attention_masks[i]``.

    The rows share each matmul (one weight read for all of them instead of one each), and
    nothing else: norms, SiLU and adds are computed per row; the rotary embeddings, cache
    writes and attention are one call per row on its own slot; the output layer runs on each
    row's last position alone, as for one row. Callers share rows only where
    :func:`rates_together` found the model's matmuls giving a block of rows the bits each
    gets alone, so each row's logits and cache writes are the bits it gets alone."""
    rows, length = input_ids.shape
    ends = [start + length for start in starts]
    masks = []
    for start, end, row_mask in zip(starts, ends, attention_masks, strict=True):
        columns = torch.arange(start, end)
        causal = torch.arange(end)[None, :] <= columns[:, None]
        masks.append((causal & row_mask[0, :end].bool()[None, :])[None, None])

    def store(query, key, value, cos, sin, cache_layer, head_dim):  # type: ignore[no-untyped-def]
        return _joined(
            [
                ops.rope_store(
                    query[i : i + 1],
                    key[i : i + 1],
                    value[i : i + 1],
                    cos[i : i + 1],
                    sin[i : i + 1],
                    cache_layer.key_buffer,
                    cache_layer.value_buffer,
                    torch.arange(starts[i], ends[i]),
                    head_dim,
                    slots[i],
                )
                for i in range(rows)
            ]
        )

    def attend(attn, query, cache_layer):  # type: ignore[no-untyped-def]
        outs = []
        for i, (slot, end) in enumerate(zip(slots, ends, strict=True)):
            keys = cache_layer.key_buffer[slot : slot + 1, :, :end]
            values = cache_layer.value_buffer[slot : slot + 1, :, :end]
            outs.append(
                _attention(
                    kernels.prefill_attention,
                    attn,
                    query[i : i + 1],
                    keys,
                    values,
                    masks[i],
                    mode=attention.prefill_mode(attn),
                ).reshape(1, length, -1)
            )
        return _joined(outs)

    hidden = _compiled_forward(model, input_ids, position_ids, layers, ops, store, attend)
    # each row's last position alone: oneDNN's one-row matmul may round otherwise than its
    # many-row one (the bf16 output layer does on an AVX-512 Xeon), and a row's logits must
    # not depend on how many rows were rated beside it
    return torch.cat([model.lm_head(hidden[i : i + 1, -1:, :])[:, -1, :] for i in range(rows)])


# rates_together's verdicts per model, by pass length and the first layer's modules (an
# adapter wraps them: another matmul path), probed once: shapes decide, not values
_TOGETHER: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def rates_together(model: torch.nn.Module, length: int = 42) -> bool:
    """Whether :func:`rows_logits` may share the matmuls of several rows' passes of ``length``
    positions on this CPU: each matmul of the model's first layer (as the forward calls it,
    in a decode step's matmuls or not: :func:`serving.engine.cpu.packed_linear.decode_rows`) gives a
    pass's rows the bits they get alone in a block of 2, 5 or 16 passes, first or last in
    it, on probe data. oneDNN's bf16 matmuls on AMX tiles do not (their blocking follows the
    row count: on the AMX Xeon of 2026-12-01, 576 x 576 and the MLP's shapes moved), where its
    AVX-512 ones did; the engine's own AMX and AVX512-BF16 matmuls do. Otherwise a row is
    rated alone."""
    verdicts = _TOGETHER.setdefault(model, {})
    decoder = model.model.layers[0]
    key = (length, packed_linear.in_decode_rows(),
           *map(id, (decoder.self_attn.q_proj, decoder.self_attn.o_proj)),
           *map(id, (decoder.mlp.gate_proj, decoder.mlp.down_proj)))  # fmt: skip
    if key not in verdicts:
        verdicts[key] = _shares_bits(model, length)
    return verdicts[key]


def _shares_bits(model: torch.nn.Module, length: int) -> bool:
    decoder = model.model.layers[0]
    attn, mlp = decoder.self_attn, decoder.mlp
    param = next(model.parameters())
    matmuls = [
        (lambda x: torch.cat(_projections((attn.q_proj, attn.k_proj, attn.v_proj), x), -1),
         attn.q_proj.in_features),
        (lambda x: packed_linear.linear_output(attn.o_proj, x), attn.o_proj.in_features),
        (lambda x: torch.cat(_projections((mlp.gate_proj, mlp.up_proj), x), -1),
         mlp.gate_proj.in_features),
        (lambda x: packed_linear.linear_output(mlp.down_proj, x), mlp.down_proj.in_features),
    ]  # fmt: skip
    return all(
        keeps_row_bits(matmul, width, param.dtype, length, param.device)
        for matmul, width in matmuls
    )


@torch.inference_mode()
def keeps_row_bits(
    matmul: Callable[[torch.Tensor], torch.Tensor],
    width: int,
    dtype: torch.dtype,
    length: int,
    device: torch.device | str = "cpu",
) -> bool:
    """Whether ``matmul`` gives a pass of ``length`` rows (``(passes, length, width)``
    inputs) the bits it gets alone when 1, 2 or 5 passes run first or last in a block of 16,
    on probe data."""
    generator = torch.Generator().manual_seed(width + length)
    x = torch.randn(16, length, width, generator=generator).to(device, dtype)
    together = matmul(x)
    for count in (1, 2, 5):
        for first in (0, 16 - count):
            alone = matmul(x[first : first + count].clone())
            if not torch.equal(alone, together[first : first + count]):
                return False
    return True


def _projections(modules: tuple[torch.nn.Module, ...], x: torch.Tensor) -> list[torch.Tensor]:
    """Each module on ``x``: one matmul where they are a packed sibling group
    (:func:`serving.engine.cpu.packed_linear.sibling_outputs`), else their own calls (PEFT's LoRA
    layers)."""
    outputs = packed_linear.sibling_outputs(modules, x)
    return outputs if outputs is not None else [module(x) for module in modules]


def _attention(kernel, attn, query, keys, values, mask, **options) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """fp32 attention by the engine's ``kernel`` (with its ``options``), or PyTorch's where the
    kernel does not take the shapes (the same contract: :mod:`serving.engine.cpu.attention`)."""
    out = kernel(query, keys, values, mask, attn.scaling, **options)
    if out is None:
        out, _ = attention.pytorch_attention(attn, query, keys, values, mask, attn.scaling)
    return out


def _compiled_forward(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    position_ids: torch.Tensor,
    layers: Sequence,
    ops: step_ops.StepOps,
    store: Callable,
    attend: Callable,
) -> torch.Tensor:
    """The model's forward over the slot cache with its adds, norms, rotary embeddings and
    cache writes in C (``ops``): the same values in the same order as transformers' LLaMA.
    ``store(query, key, value, cos, sin, cache_layer, head_dim)`` writes the new keys and
    values (:meth:`~serving.engine.cpu.kernels.step_ops.StepOps.rope_store`) and gives the fp32
    queries;
    ``attend(attention_module, fp32_queries, cache_layer)`` gives the fp32 attention output.
    The residual stream is carried as ``hidden`` plus the ``delta`` a block adds, so that
    each norm takes its add with it (the next layer's, or the final norm, takes the MLP's).
    The final norm's output, ``(rows, positions, hidden)``: the caller chooses the positions
    the output layer runs on."""
    inner = model.model
    hidden = inner.embed_tokens(input_ids)
    cos, sin = inner.rotary_emb(hidden, position_ids=position_ids)
    rows, length = input_ids.shape
    delta = None
    for decoder, cache_layer in zip(inner.layers, layers, strict=True):
        attn = decoder.self_attn
        hidden, normed = ops.add_rmsnorm(hidden, delta, decoder.input_layernorm)
        query = store(
            *_projections((attn.q_proj, attn.k_proj, attn.v_proj), normed),
            cos,
            sin,
            cache_layer,
            attn.head_dim,
        )
        out = attend(attn, query, cache_layer)
        delta = packed_linear.linear_output(
            attn.o_proj, out.to(hidden.dtype).reshape(rows, length, -1)
        )
        hidden, normed = ops.add_rmsnorm(hidden, delta, decoder.post_attention_layernorm)
        mlp = decoder.mlp
        gate, up = _projections((mlp.gate_proj, mlp.up_proj), normed)
        # LlamaMLP.forward's arithmetic (transformers' SiLU module is F.silu: called as such;
        # a bf16 model's SiLU and product in one pass where that gives their bits here)
        silu = type(mlp.act_fn) in _SILU
        if silu and ops.silu is not None and gate.dtype == torch.bfloat16:
            product = ops.silu_mul(gate, up)
        else:
            product = (F.silu(gate) if silu else mlp.act_fn(gate)) * up
        delta = packed_linear.linear_output(mlp.down_proj, product)
    _, hidden = ops.add_rmsnorm(hidden, delta, inner.norm)
    return hidden


def _joined(parts: list[torch.Tensor]) -> torch.Tensor:
    """Rows' tensors as one batch (one row's as it is: a prompt's is not copied)."""
    return parts[0] if len(parts) == 1 else torch.cat(parts)
