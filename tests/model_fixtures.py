"""Tiny random checkpoints written on the fly in the official on-disk format (fp32 for parity tests)."""

from __future__ import annotations

from pathlib import Path

import pytest

from stepaudio.model.tiny import write_tiny_checkpoint


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Sharded (2 files + index), untied head, fp32."""
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny"), seed=0, num_shards=2, dtype="float32")


@pytest.fixture(scope="session")
def tiny_tied_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Single model.safetensors, tied head, fp32."""
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny_tied"), seed=1, num_shards=1, dtype="float32",
                                 tie_word_embeddings=True)
