"""The engine's attention on CPU: fp32, and batch-invariant in decode steps.

Two measured problems with transformers' default (PyTorch SDPA) on CPU, and the fix for each:

- Speed with bf16 weights: bf16 matmuls run 3-4x faster than fp32 on CPUs with native bf16
  (AVX512-BF16 / AMX), but the CPU flash-attention kernel is ~2.5x *slower* in bf16 than in
  fp32 for decode steps (one query against hundreds of cached keys: 2.1 vs 0.8 ms a call on
  SmolLM2-135M, batch 8). So the engine keeps its KV cache in fp32 (bf16 keys and values
  convert exactly) and attention runs in fp32; the softmax keeps fp32 precision too.
- Batch invariance: the SDPA kernel gives a row different bits at batch 1 than inside a
  batch (it splits the work differently), and in bf16 such a difference survives rounding and
  flips near-ties in greedy decoding (1 of 8 Lee articles changed its summary alone vs
  batched). A decode step (one query per row) therefore computes attention as two batched
  matmuls and a softmax, which give each row the same bits at any batch size (measured, same
  speed as SDPA at this size). Prefill and the rating pass run one row at a time
  (:mod:`serving.engine.cpu.decoding`), so they keep SDPA (:func:`_prefill_attention`).

Both are now behind the engine's own C kernels (:mod:`serving.engine.cpu.kernels`) where the cache
holds the model's own dtype (bf16 keys of a bf16 model, fp32 of an fp32 one), and kept for what they
do not cover (a bf16 model's fp32 cache, shapes the kernels refuse, no C compiler).

Registered with transformers' ``AttentionInterface`` under :data:`NAME` (with the SDPA mask
builder), and under :data:`NAME_PYTORCH` without the kernels (``cpu.attention_kernels: false``);
:func:`use_engine_attention` switches a model to one of them, and records on its attention
modules how a bf16 prompt's attention runs: the fp32 loops, on AMX tiles
(``cpu.amx_attention``) or in AVX512-BF16 dot products (``cpu.bf16_attention``):
:func:`serving.engine.cpu.kernels.prefill_attention`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.nn import functional as F
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from serving.engine.cpu import kernels

NAME = "newsdesk_cpu"
NAME_PYTORCH = "newsdesk_cpu_pytorch"


def _decode_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor | None,
    scaling: float,
) -> torch.Tensor:
    """One query position per row: ``(B, H, 1, D)`` against ``(B, Hkv, L, D)`` keys."""
    batch, heads, _, dim = query.shape
    groups = heads // key.shape[1]
    # Query heads h*groups .. h*groups+groups-1 share key head h (transformers' repeat_kv).
    q = query.reshape(batch, key.shape[1], groups, dim)
    scores = torch.matmul(q, key.transpose(-1, -2)) * scaling
    if mask is not None:
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, float("-inf"))
        else:
            scores = scores + mask
    out = torch.matmul(torch.softmax(scores, dim=-1), value)  # (B, Hkv, groups, D)
    return out.reshape(batch, 1, heads, dim)


def _prefill_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor | None,
    scaling: float,
) -> torch.Tensor:
    """Many query positions (a prompt, the rating pass): PyTorch's SDPA with grouped-query
    heads (``enable_gqa``): the same bits as transformers' SDPA path, which copies every key
    and value head for its query heads first (3.8 vs 4.4 ms a layer for a 490-token prompt).

    Tried and left: one chunk of queries at a time against only the keys the chunk can see
    (2.8 ms a layer): not the same bits, and 31-36 of 200 Lee articles got another summary,
    with 5-8 fewer passing the verifier (120 unchunked, at two chunk sizes)."""
    q_len, kv_len = query.shape[2], key.shape[2]
    if mask is None and kv_len != q_len:  # causal after cached keys: SDPA's is_causal is not
        columns = torch.arange(kv_len, device=query.device)
        rows = torch.arange(kv_len - q_len, kv_len, device=query.device)
        mask = (columns[None, :] <= rows[:, None])[None, None]
    return F.scaled_dot_product_attention(
        query,
        key,
        value,
        attn_mask=mask,
        is_causal=mask is None,
        scale=scaling,
        enable_gqa=True,
    ).transpose(1, 2)


def engine_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """fp32 attention: the engine's kernels (:mod:`serving.engine.cpu.kernels`) where the cache
    holds the model's dtype (the slot cache does: bf16 for a bf16 model when the kernels are built,
    fp32 for an fp32 model), else :func:`pytorch_attention`. Returns ``(B, q_len, H, D)`` in
    the query's dtype, like transformers' SDPA function."""
    if key.dtype == query.dtype:
        scale = scaling if scaling is not None else query.shape[-1] ** -0.5
        if query.shape[2] == 1 and attention_mask is not None:
            out = kernels.decode_attention(query, key, value, attention_mask, scale)
        else:
            out = kernels.prefill_attention(
                query, key, value, attention_mask, scale, mode=prefill_mode(module)
            )
        if out is not None:
            return out.to(query.dtype), None
    return pytorch_attention(module, query, key, value, attention_mask, scaling)


def pytorch_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """fp32 attention on PyTorch's kernels (decode steps through :func:`_decode_attention`)."""
    dtype = query.dtype
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    query, key, value = query.float(), key.float(), value.float()
    if query.shape[2] == 1:
        out = _decode_attention(query, key, value, attention_mask, scale)
    else:
        out = _prefill_attention(query, key, value, attention_mask, scale)
    return out.to(dtype), None


def use_engine_attention(
    model: torch.nn.Module, use_kernels: bool = True, amx: bool = False, dpbf16: bool = False
) -> None:
    """Switch a transformers model to :func:`engine_attention`, or to
    :func:`pytorch_attention` (``use_kernels`` false). ``amx``, ``dpbf16``: its prompts' and
    rating passes' attention on AMX tiles or in AVX512-BF16 dot products where they run
    (``cpu.amx_attention``, ``cpu.bf16_attention``:
    :func:`serving.engine.cpu.kernels.prefill_mode`), recorded on its attention modules, the ones
    the attention function is called with: two engines in one process may differ."""
    name = NAME if use_kernels else NAME_PYTORCH
    AttentionInterface.register(name, engine_attention if use_kernels else pytorch_attention)
    AttentionMaskInterface.register(name, sdpa_mask)
    model.set_attn_implementation(name)
    mode = kernels.prefill_mode(amx, dpbf16) if use_kernels else kernels.PREFILL_LOOPS
    for module in model.modules():
        if hasattr(module, "q_proj"):  # an attention block
            set_prefill_mode(module, mode)


_MODE = "_newsdesk_prefill_mode"  # the attribute set_prefill_mode sets


def set_prefill_mode(module: torch.nn.Module, mode: int) -> None:
    """Record on ``module`` (an attention block) how its prefill attention runs (one of
    :mod:`serving.engine.cpu.kernels`' ``PREFILL_*``)."""
    setattr(module, _MODE, mode)


def prefill_mode(module: torch.nn.Module) -> int:
    """How ``module`` (an attention block) runs its prefill attention (the loops unless
    :func:`set_prefill_mode` said otherwise)."""
    return getattr(module, _MODE, kernels.PREFILL_LOOPS)
