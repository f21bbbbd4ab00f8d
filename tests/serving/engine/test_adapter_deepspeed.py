"""LoRA adapters swapped on a loaded engine, and DeepSpeed inference on CPU (and GPU)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cluster.settings import Settings
from serving.engine import SummarizeEngine
from serving.engine.loading import init_deepspeed
from serving.model.profiles import load_profile
from serving.model.result import Result
from tests.support.engine_articles import GRADED


def _make_adapter(model_dir: Path, out: Path, seed: int) -> Path:
    """A real PEFT LoRA adapter with non-zero (random) weights on the profile's modules."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    config = LoraConfig(
        r=4,
        lora_alpha=64,
        target_modules=load_profile("cpu-small").lora_target_modules,
        init_lora_weights=False,  # random B: the adapter changes the outputs
    )
    get_peft_model(base, config).save_pretrained(out)
    return out


def test_set_adapter_swaps_lora_without_reloading_the_base(
    engine: SummarizeEngine, prepared_model_dir: Path, tmp_path: Path
) -> None:
    article = [GRADED[2]]
    base_weight = engine.adapters.base.get_input_embeddings().weight
    before = engine.summarize(article, max_new_tokens=12)[0]
    assert isinstance(before, Result) and before.adapter_id is None
    first = _make_adapter(prepared_model_dir, tmp_path / "first", seed=1)
    second = _make_adapter(prepared_model_dir, tmp_path / "second", seed=2)
    try:
        engine.set_adapter(first)
        assert engine.adapter_id and engine.adapter_id.startswith("first@")
        with_first = engine.summarize(article, max_new_tokens=12)[0]
        engine.set_adapter(second)
        assert engine.adapter_id and engine.adapter_id.startswith("second@")
        with_second = engine.summarize(article, max_new_tokens=12)[0]
    finally:
        engine.set_adapter(None)
    after = engine.summarize(article, max_new_tokens=12)[0]
    # The base stayed loaded (same tensor), the adapters changed the model's outputs, and
    # removing them restored the base model's exact result.
    assert engine.adapters.base.get_input_embeddings().weight is base_weight
    m = [r.importance_parts.model for r in (before, with_first, with_second)]
    assert len(set(m)) == 3, m
    assert with_first.adapter_id != with_second.adapter_id
    assert after.model_dump(exclude={"timings"}) == before.model_dump(exclude={"timings"})


def test_missing_adapter_is_a_clear_error(engine: SummarizeEngine, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"adapter_config\.json"):
        engine.set_adapter(tmp_path)
    assert engine.adapter_id is None


def test_cpu_profile_runs_deepspeed_init_inference(engine: SummarizeEngine) -> None:
    """cpu-small enables DeepSpeed inference (no kernel injection): the engine's module is
    the one DeepSpeed returned; test_engine_batch proves its tokens equal ``generate``'s."""
    import deepspeed

    assert (
        engine.profile.deepspeed.enabled and not engine.profile.deepspeed.replace_with_kernel_inject
    )
    assert engine.deepspeed_engine is not None
    assert isinstance(engine.deepspeed_engine, deepspeed.InferenceEngine)
    assert engine.decoder.model is engine.deepspeed_engine.module


def test_kernel_injection_has_no_cpu_backend(prepared_model_dir: Path) -> None:
    """What DeepSpeed 0.19 does on CPU when asked for kernel injection: it raises."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(prepared_model_dir, dtype=torch.float32)
    profile = load_profile("cpu-small")
    profile.deepspeed.replace_with_kernel_inject = True
    with pytest.raises(ValueError, match="not been implemented on CPU"):
        init_deepspeed(model, profile)


def test_engine_refuses_kernel_injection_on_cpu_with_a_clear_error(
    engine_settings: Settings, tmp_path: Path
) -> None:
    profile = load_profile("cpu-small")
    profile.deepspeed.replace_with_kernel_inject = True
    with pytest.raises(ValueError, match="kernel injection needs CUDA"):
        SummarizeEngine.load(profile, engine_settings)


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("inject", [False, True])
def test_gpu_deepspeed_padded_batches_keep_each_articles_output(
    engine_settings: Settings, inject: bool
) -> None:
    """On CUDA, with and without kernel injection: greedy results alone == in a batch
    (DeepSpeed issue 3960). gpu-7b turns injection on only where this passes."""
    profile = load_profile("cpu-small").model_copy(
        update={"device": "cuda", "dtype": "float16", "max_batch_size": 8}
    )
    profile.deepspeed.enabled = True
    profile.deepspeed.replace_with_kernel_inject = inject
    profile.deepspeed.dtype = "float16"
    gpu_engine = SummarizeEngine.load(profile, engine_settings)
    together = gpu_engine.summarize(GRADED, max_new_tokens=32)
    alone = [gpu_engine.summarize([a], max_new_tokens=32)[0] for a in GRADED]
    assert [r.summary for r in alone] == [r.summary for r in together]


@pytest.mark.gpu
@needs_cuda
def test_gpu_7b_profile_loads_and_summarizes(engine_settings: Settings) -> None:
    """The gpu-7b profile end to end (needs its weights: NEWSDESK_MODEL_SOURCE or hub)."""
    gpu_engine = SummarizeEngine.load("gpu-7b", engine_settings)
    outcomes = gpu_engine.summarize(GRADED, max_new_tokens=48)
    assert all(isinstance(o, Result) for o in outcomes)
    scores = [o.importance for o in outcomes]
    assert scores == sorted(scores)
