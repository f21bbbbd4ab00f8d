"""Fixtures shared by the training tests (imported by tests/test_train_*.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ingestion.settings import Settings


@pytest.fixture(scope="session")
def model_dir(shared_state_dir: Path) -> Path:
    """The default model as a transformers folder (converted once per session)."""
    from serving.model_source import prepare_model
    from serving.profiles import load_profile

    return prepare_model(load_profile("cpu-small"), Settings(state_dir=shared_state_dir))


@pytest.fixture(scope="session")
def tokenizer(model_dir: Path):  # type: ignore[no-untyped-def]
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)
