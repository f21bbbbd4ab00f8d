"""Loading the model a profile names: tokenizer, weights, then the forward-ready model.

transformers ``AutoModelForCausalLM.from_pretrained(folder, dtype=...)`` on the profile's device,
the tokenizer with ``padding_side="left"``; then :func:`finish` turns the (possibly adapted)
base model into what forward passes call: ``deepspeed.init_inference`` with the profile's
options when ``deepspeed.enabled``, the optional CPU int8 variants, and on CPU the engine's
batch-invariant attention (:mod:`serving.engine.cpu.attention`) and bf16 weights packed for oneDNN
once (:mod:`serving.engine.cpu.packed_linear`).

On CPU DeepSpeed 0.19 runs with ``DS_ACCELERATOR=cpu``; ``init_inference`` without kernel
injection wraps the model unchanged (no CPU kernels exist; injection raises "This op had not
been implemented on CPU backend"), so the cpu profile enables it without injection.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from serving.engine.cpu import packed_linear
from serving.engine.cpu.attention import use_engine_attention
from serving.model.profiles import ModelProfile, resolve_dtype

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(profile: ModelProfile) -> torch.device:
    if profile.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if profile.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"profile {profile.name!r} needs CUDA, and none is available")
    return torch.device(profile.device)


def check_deepspeed(profile: ModelProfile) -> None:
    """Refuse, before loading anything, DeepSpeed options that cannot run on the device."""
    ds = profile.deepspeed
    if ds.enabled and ds.replace_with_kernel_inject and profile.device != "cuda":
        raise ValueError(
            f"profile {profile.name!r}: DeepSpeed kernel injection needs CUDA (DeepSpeed "
            "0.19 has no CPU kernels); set deepspeed.replace_with_kernel_inject: false"
        )


def replaces_modules(profile: ModelProfile) -> bool:
    """DeepSpeed kernel injection or tensor parallelism replace the model's modules (with their
    own KV cache): the engine's decode loop and attention cannot drive them, so decoding goes
    through ``model.generate`` (:class:`serving.engine.generate.Decoder`)."""
    ds = profile.deepspeed
    return ds.enabled and (ds.replace_with_kernel_inject or ds.tensor_parallel > 1)


def changes_weights(profile: ModelProfile) -> bool:
    """:func:`finish` changes the base model's weights in place (DeepSpeed's replaced modules,
    an int8 variant): an adapter change must start again from freshly loaded weights."""
    return replaces_modules(profile) or profile.cpu.int8_decode or profile.cpu.dynamic_int8


def rounds_to_fp16(profile: ModelProfile, device: torch.device) -> bool:
    """:func:`finish` rounds the Linear weights of this (resolved) profile's fp32 model to
    fp16 values on ``device`` (``cpu.fp16_weights``)."""
    options = profile.cpu
    return (
        options.fp16_weights
        and not (options.int8_decode or options.dynamic_int8)
        and profile.dtype == "float32"
        and device.type == "cpu"
        and not replaces_modules(profile)
    )


def load_tokenizer(model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(model_dir: Path, profile: ModelProfile, device: torch.device) -> torch.nn.Module:
    """The plain transformers model, in the profile's dtype, on ``device``, in eval mode."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=DTYPES[profile.dtype])
    return model.to(device).eval()


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
            "dtype": DTYPES[resolve_dtype(profile.ds_dtype, resolve_device(profile).type)],
            "replace_with_kernel_inject": options.replace_with_kernel_inject,
            "tensor_parallel": {"tp_size": options.tensor_parallel},
        },
    )
    return engine


def finish(
    base: torch.nn.Module, profile: ModelProfile, device: torch.device
) -> tuple[torch.nn.Module, Any]:
    """``(model, deepspeed_engine)``: what forward passes call, built from ``base`` (after any
    adapter change), and the DeepSpeed InferenceEngine wrapping it (None when disabled)."""
    model: torch.nn.Module = base
    deepspeed_engine = None
    if profile.deepspeed.enabled:
        deepspeed_engine = init_deepspeed(model, profile)
        model = deepspeed_engine.module
    _apply_cpu_options(model, profile, device)
    if device.type == "cpu" and not replaces_modules(profile):
        use_engine_attention(
            model,
            use_kernels=profile.cpu.attention_kernels,
            amx=profile.cpu.amx_attention,
            dpbf16=profile.cpu.bf16_attention,
        )
        rounded = rounds_to_fp16(profile, device)
        if rounded:  # again after a merged adapter: its sums are fp32
            packed_linear.round_to_fp16(model)
        if profile.cpu.packed_weights and packed_linear.available():
            # again after every adapter change: a merged adapter changed the weights
            packed_linear.pack_linears(
                model,
                fp16_panels=rounded,
                amx_tiles=profile.cpu.amx_matmul,
                bf16_blocks=profile.cpu.bf16_matmul,
            )
    return model, deepspeed_engine


def _apply_cpu_options(model: torch.nn.Module, profile: ModelProfile, device: torch.device) -> None:
    """Optional int8 variants (quality measured by the benchmark); CPU only. Applied to
    the model as loaded; an adapter change reloads the base first (:func:`changes_weights`)."""
    options = profile.cpu
    if device.type != "cpu" or getattr(model, "_newsdesk_quantized", False):
        return
    if options.int8_decode:
        from serving.engine.cpu.int8 import apply_int8_decode

        apply_int8_decode(model)
        model._newsdesk_quantized = True
    elif options.dynamic_int8:
        from serving.engine.cpu.int8 import apply_dynamic_int8

        apply_dynamic_int8(model)
        model._newsdesk_quantized = True
