"""Saving and resuming a training loop's state (trainable tensors, optimizer, step), shared by `train align`
and every `train mgrd` stage, so a run killed at any point continues exactly where its last save left it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch


def save_training_state(path: Path, step: int, trainable: dict[str, torch.Tensor], optimizer: dict) -> None:
    """`optimizer` is the optimizer's state dict. Every tensor is written from the CPU, so a state saved by a
    GPU run loads anywhere. Written through a temporary file and a rename: a kill never leaves a half-written
    state."""
    tmp = path.with_suffix(".tmp")
    torch.save(on_cpu({"step": step, "trainable": trainable, "optimizer": optimizer}), tmp)
    tmp.replace(path)


def on_cpu(value):
    """`value` (tensors in dicts, lists and tuples) with every tensor on the CPU (CPU ones are not copied)."""
    if isinstance(value, torch.Tensor):
        return value.cpu()
    if isinstance(value, dict):
        return {k: on_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(on_cpu(v) for v in value)
    return value


def load_training_state(path: Path, log_path: Path, total_steps: int) -> dict | None:
    """The saved state (step, trainable tensors, optimizer state), None when `path` does not exist yet; the
    log's records past its step (logged before a kill) are dropped."""
    state = torch.load(path, weights_only=True) if path.is_file() else None
    step = int(state["step"]) if state else 0
    if state and step < total_steps:
        print(f"stepaudio: resuming {path.parent} at step {step}/{total_steps}", file=sys.stderr)
    _keep_log_until(log_path, step)
    return state


def resume_training_state(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, log_path: Path,
                          total_steps: int) -> int:
    """The step to continue from (0 when `path` does not exist yet), with the model's trainable tensors and
    the optimizer restored."""
    state = load_training_state(path, log_path, total_steps)
    if state is None:
        return 0
    model.load_state_dict(state["trainable"], strict=False)
    optimizer.load_state_dict(state["optimizer"])
    return int(state["step"])


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
