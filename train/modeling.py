"""The model being fine-tuned: base + PEFT LoRA (or QLoRA), the completion-only loss, merging.

The loss wrapper computes logits only at the positions that carry a label: the decoder's hidden
states are gathered at those positions before the output layer. For the 135M model the 49K-word
output layer over a ~400-token prompt costs about as much as the 30 decoder layers, and none of
those prompt logits would enter the loss.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from train.data import IGNORE_INDEX

ADAPTER_META = "newsdesk-adapter.json"


class CompletionLoss(nn.Module):
    """Wraps a PEFT causal LM; ``forward`` returns ``(loss_sum, n_tokens)`` over labelled tokens."""

    def __init__(self, peft_model: nn.Module) -> None:
        super().__init__()
        self.peft_model = peft_model

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        causal_lm = self.peft_model.get_base_model()
        hidden = causal_lm.get_decoder()(
            input_ids=input_ids, attention_mask=attention_mask, use_cache=False
        ).last_hidden_state
        # position t predicts token t+1: keep the positions whose next token is labelled
        targets = labels[:, 1:]
        keep = targets != IGNORE_INDEX
        selected = hidden[:, :-1][keep]
        logits = causal_lm.get_output_embeddings()(selected).float()
        loss_sum = F.cross_entropy(logits, targets[keep], reduction="sum")
        return loss_sum, keep.sum()


def check_target_modules(model: nn.Module, targets: list[str]) -> None:
    """LoRA target names must exist in this model family (the 7B's names differ by family)."""
    leaf_names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [t for t in targets if t not in leaf_names]
    if missing:
        linear = sorted(
            {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)}
        )
        raise ValueError(
            f"LoRA target modules {missing} do not exist in this model; its linear layers: {linear}"
        )


def load_base_model(
    model_dir: Path, *, dtype: torch.dtype, quantization: str = "none", device: str = "cpu"
) -> nn.Module:
    """The base causal LM: plain, or 4-bit NF4 with double quantization (QLoRA, CUDA only)."""
    from transformers import AutoModelForCausalLM

    if quantization == "nf4":
        if not torch.cuda.is_available():
            raise RuntimeError(
                "QLoRA (quantization: nf4) needs CUDA: bitsandbytes 4-bit is GPU-only"
            )
        from peft import prepare_model_for_kbit_training
        from transformers import BitsAndBytesConfig

        bnb = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
        model = AutoModelForCausalLM.from_pretrained(
            model_dir, quantization_config=bnb, dtype=torch.bfloat16, device_map={"": device}
        )
        return prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
    return model.to(device)


def add_lora(model: nn.Module, *, r: int, alpha: int, dropout: float, targets: list[str]) -> Any:
    from peft import LoraConfig, get_peft_model

    check_target_modules(model, targets)
    config = LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, task_type="CAUSAL_LM"
    )
    return get_peft_model(model, config)


def write_adapter_meta(adapter_dir: Path, meta: dict[str, Any]) -> None:
    (Path(adapter_dir) / ADAPTER_META).write_text(json.dumps(meta, indent=2) + "\n")


def read_adapter_meta(adapter_dir: Path) -> dict[str, Any]:
    path = Path(adapter_dir) / ADAPTER_META
    return json.loads(path.read_text()) if path.is_file() else {}


def merge_adapter(base_dir: Path, adapter_dir: Path, out_dir: Path) -> Path:
    """The adapter merged into a bf16 copy of the base, saved as a plain transformers folder.

    Never into a 4-bit base: merging LoRA deltas into NF4 weights re-quantizes them and loses
    the update; a QLoRA adapter is merged into the unquantized bf16 base instead.
    """
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.bfloat16)
    refuse_quantized(base)
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    out_dir = Path(out_dir)
    merged.save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(out_dir)
    return out_dir


def refuse_quantized(model: nn.Module) -> None:
    if getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False):
        raise ValueError("refusing to merge an adapter into a 4/8-bit base: use the bf16 base")
    qconfig = getattr(getattr(model, "config", None), "quantization_config", None)
    if qconfig:
        raise ValueError(f"refusing to merge into a quantized base ({qconfig})")
