"""PEFT LoRA adapters on the loaded base model: apply, swap, remove, merge.

The base model stays loaded across adapter changes: PEFT injects the LoRA layers into it in
place, a swap loads the new adapter next to the old one before deleting the old, and removing
unloads the layers without merging (the base weights are untouched). A merged adapter
(``merge_adapter``) changes the base weights, so the next change starts from freshly loaded
weights (the engine decides that, :func:`serving.engine.loading.changes_weights`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from serving.engine.identity import adapter_identity


class Adapters:
    """The base model and the adapter applied to it (``adapter_id``; None: the base model)."""

    def __init__(self, base: torch.nn.Module) -> None:
        self.base = base  # plain transformers model (LoRA layers injected in place)
        self.adapter_id: str | None = None
        self.merged = False  # an adapter merged into the base weights (merge_adapter)
        self._peft: Any = None

    def apply(self, adapter_dir: Path, *, merge: bool) -> None:
        """Apply the PEFT adapter in ``adapter_dir``, replacing the current one."""
        from peft import PeftModel

        if not (adapter_dir / "adapter_config.json").is_file():
            raise FileNotFoundError(f"{adapter_dir} is not a PEFT adapter (no adapter_config.json)")
        name = "adapter"
        if self._peft is None:
            self._peft = PeftModel.from_pretrained(self.base, str(adapter_dir), adapter_name=name)
        else:
            old = self._peft.active_adapter
            name = f"adapter{int(time.time() * 1000)}"
            self._peft.load_adapter(str(adapter_dir), adapter_name=name)
            self._peft.set_adapter(name)
            self._peft.delete_adapter(old)
        self._peft.eval()
        self.adapter_id = adapter_identity(adapter_dir)
        if merge:
            # LoRA layers add two small matmuls to every projection: ~30% of the decode time
            # of the 135M model (measured, README "Training"). Merged, the model is a plain
            # one again; a later change reloads the base (SummarizeEngine.set_adapter).
            self.base = self._peft.merge_and_unload()
            self._peft = None
            self.merged = True

    def remove(self) -> None:
        """Back to the base model: the LoRA layers are removed, not merged."""
        if self._peft is not None:
            self.base = self._peft.unload()
            self._peft = None
        self.adapter_id = None

    def replace_base(self, base: torch.nn.Module) -> None:
        """Start again from freshly loaded weights (without LoRA layers). The adapter id is
        left for the next :meth:`apply` or :meth:`remove` to set."""
        self.base = base
        self._peft = None
        self.merged = False
