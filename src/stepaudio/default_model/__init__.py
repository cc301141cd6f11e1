"""The default model: assembled on first use from pip weight packages plus this project's trained delta."""

from __future__ import annotations

from pathlib import Path

# What clients see as the model name when the default model is served.
DEFAULT_MODEL_NAME = "stepaudio-default"


def model_dir_or_default(model_dir: Path | None) -> Path:
    """`model_dir` itself, or the default model's cached folder (assembled first if needed)."""
    if model_dir is not None:
        return model_dir
    from .assemble import ensure_default_model  # torch only when the default model is really needed

    return ensure_default_model()
