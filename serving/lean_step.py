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
every step of a run, ``tests/test_continuous_batching.py``), only without the glue: 1.04x
per step at 1, 8 and 16 rows (the two paths on the same steps, alternating which runs
first). Owning the step is also where fused kernels for the norms, rotary embeddings and
cache writes would go (docs/engine.md).

The projections are still called as modules, so PEFT's LoRA layers (which replace them in
place) and packed weights (:mod:`serving.packed_linear`) apply unchanged. A model that is not
plain LLaMA (another architecture, DeepSpeed's injected kernels) or not on the engine's
attention takes the model's own forward: :func:`applies` says which.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers.models.llama import modeling_llama

from serving import attention

# the engine's attention functions by the name the model is switched to (serving.attention)
_ATTENTION = {
    attention.NAME: attention.engine_attention,
    attention.NAME_PYTORCH: attention.pytorch_attention,
}


def applies(model: torch.nn.Module) -> bool:
    """The model is transformers' LLaMA as loaded (decoder layers of the library's own class)
    on one of the engine's attention functions (:mod:`serving.attention`)."""
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
) -> torch.Tensor:
    """``(B, vocab)`` logits of one decode step: ``input_ids`` and ``position_ids`` ``(B, 1)``,
    ``attention_mask`` the ``(B, 1, 1, L)`` bool mask over the cache, ``layers`` the cache's
    layers (their ``update`` writes the step's keys and values and returns what to attend)."""
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
