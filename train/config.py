"""A training run's configuration: one YAML file per run in ``configs/train/``.

The run ``name`` names the Ray Train run: submitting the same config again resumes it from
its latest checkpoint. Paths left unset fall under ``Settings.training_dir`` (default
``STATE_DIR/training``): pairs in ``pairs/``, Ray Train storage in ``ray/``, the finished
adapter (and optional merged model) in ``runs/<name>/``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO_ROOT / "configs" / "train"
DEFAULT_DS_CONFIG = REPO_ROOT / "configs" / "ds_config.json"


class LoraOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    r: int = Field(default=16, ge=1)
    alpha: int = Field(default=32, ge=1)
    dropout: float = Field(default=0.05, ge=0, lt=1)
    target_modules: list[str] | None = Field(
        default=None, description="None: the model profile's lora_target_modules."
    )


class TrainConfig(BaseModel):
    """What one fine-tuning run does. See ``configs/train/*.yaml`` for commented examples."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
    profile: str = "cpu-small"
    data_dir: Path | None = Field(default=None, description="train.jsonl + val.jsonl")
    ds_config: Path = DEFAULT_DS_CONFIG
    # --- Ray Train ---
    num_workers: int = Field(default=2, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(default=1.0, gt=0)
    threads_per_worker: int | None = Field(
        default=None, ge=1, description="torch threads per worker (None: cpus_per_worker)."
    )
    max_failures: int = Field(default=0, ge=-1, description="worker-group restarts from ckpt")
    # --- optimisation ---
    epochs: int = Field(default=1, ge=1)
    micro_batch_size: int = Field(default=1, ge=1)
    gradient_accumulation_steps: int = Field(default=4, ge=1)
    learning_rate: float = Field(default=2e-4, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    warmup_ratio: float = Field(default=0.05, ge=0, lt=1)
    seed: int = 42
    lora: LoraOptions = Field(default_factory=LoraOptions)
    quantization: Literal["none", "nf4"] = Field(
        default="none", description="nf4: QLoRA (bitsandbytes 4-bit NF4, double quant; CUDA)"
    )
    gradient_checkpointing: bool = False
    # --- data ---
    max_prompt_tokens: int | None = Field(
        default=None,
        ge=64,
        description="Prompt budget while training (None: the profile's). The text is cut "
        "from its end, as at serving, so a shorter budget keeps each article's lead.",
    )
    max_target_tokens: int = Field(default=128, ge=8, description="longer targets are skipped")
    max_train_pairs: int | None = Field(default=None, ge=1)
    max_val_pairs: int | None = Field(default=None, ge=1)
    # --- checkpoints and outputs ---
    checkpoint_every_steps: int | None = Field(
        default=None, ge=1, description="also checkpoint every N optimizer steps"
    )
    keep_checkpoints: int = Field(default=2, ge=1)
    merge: bool = Field(default=False, description="also save the adapter merged into bf16")
    # --- evaluation ---
    rouge_pairs: int = Field(
        default=32, ge=0, description="val pairs summarized by the engine for ROUGE-L (0: off)"
    )
    # --- fault injection (tests of resume): fail once at this optimizer step ---
    fail_at_step: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _qlora_needs_gpu(self) -> TrainConfig:
        if self.quantization == "nf4" and not self.use_gpu:
            raise ValueError("quantization: nf4 (QLoRA) needs use_gpu: true (bitsandbytes/CUDA)")
        return self


def config_path(name_or_path: str | Path) -> Path:
    text = str(name_or_path)
    if text.endswith((".yaml", ".yml")) or "/" in text:
        return Path(text).expanduser()
    return CONFIG_DIR / f"{text}.yaml"


def load_train_config(name_or_path: str | Path, **overrides: object) -> TrainConfig:
    """Read a run config (a name in configs/train/ or a path); ``overrides`` win."""
    path = config_path(name_or_path)
    if not path.is_file():
        known = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
        raise FileNotFoundError(f"training config {name_or_path!r} not found; known: {known}")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    data.update({k: v for k, v in overrides.items() if v is not None})
    config = TrainConfig.model_validate(data)
    if not config.ds_config.is_absolute():
        config.ds_config = (REPO_ROOT / config.ds_config).resolve()
    return config
