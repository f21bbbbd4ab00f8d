"""Training's settings section: where runs live and which teacher writes the targets.

It extends the serving section because training runs the engine (the self-verified teacher,
evaluation) exactly as serving configures it.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from serving.settings import ServingSettings


class TrainSettings(ServingSettings):
    """What training-data generation, fine-tuning and evaluation read."""

    # --- training (train/) ------------------------------------------------------------------
    training_dir: Path | None = Field(
        default=None,
        description=(
            "Training pairs (`pairs/`), Ray Train storage and checkpoints (`ray/`), adapters "
            "(`runs/<name>/`)."
        ),
    )
    teacher_url: str | None = Field(
        default=None,
        description=(
            "Default teacher endpoint of `generate_training_data` (OpenAI-compatible API base, "
            "or the Serve app's URL)."
        ),
    )
    teacher_model: str | None = Field(
        default=None, description="Model name sent to an OpenAI-compatible teacher."
    )
    teacher_api_key: str | None = Field(
        default=None,
        description="Bearer token (openai) / API key (serve) for the teacher; unset = none.",
    )
