"""Saving and resuming a training loop's state (trainable tensors, optimizer, step), shared by `train align`
and every `train mgrd` stage, so a run killed at any point continues exactly where its last save left it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch


def save_training_state(path: Path, step: int, trainable: dict[str, torch.Tensor],
                        optimizer: torch.optim.Optimizer) -> None:
    """Written through a temporary file and a rename: a kill never leaves a half-written state."""
    tmp = path.with_suffix(".tmp")
    torch.save({"step": step, "trainable": trainable, "optimizer": optimizer.state_dict()}, tmp)
    tmp.replace(path)


def resume_training_state(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, log_path: Path,
                          total_steps: int) -> int:
    """The step to continue from (0 when `path` does not exist yet). The model's trainable tensors and the
    optimizer are restored, and the log's records past that step (logged before a kill) are dropped."""
    start = 0
    if path.is_file():
        state = torch.load(path, weights_only=True)
        model.load_state_dict(state["trainable"], strict=False)
        optimizer.load_state_dict(state["optimizer"])
        start = int(state["step"])
        if start < total_steps:
            print(f"stepaudio: resuming {path.parent} at step {start}/{total_steps}", file=sys.stderr)
    _keep_log_until(log_path, start)
    return start


def _keep_log_until(path: Path, step: int) -> None:
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line + "\n")
        except (ValueError, KeyError, TypeError):  # a line cut short by the kill
            continue
    path.write_text("".join(kept))
