"""The device a training run puts its model and batches on: "auto", "cpu" or "cuda".

"auto" is CUDA when torch sees a GPU, else the CPU. Under torchrun each process takes the GPU of its
LOCAL_RANK (one process per GPU, what nccl expects), so the choice is resolved per process, and before any
model is loaded, so a wrong one costs no waiting. torch is imported only where a device is resolved: run
configs check the setting without it.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

DEVICES = ("auto", "cpu", "cuda")


def check_device_choice(choice: str) -> None:
    """Refuse a device setting other than auto, cpu or cuda (a config check: touches no GPU)."""
    if choice not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}, not {choice!r}")


def resolve_device(choice: str, cuda_count: int, local_rank: int | None) -> torch.device:
    """The device for `choice` on a machine with `cuda_count` visible GPUs, for torchrun's `local_rank`
    (None: not started by torchrun, GPU 0)."""
    import torch

    check_device_choice(choice)
    if choice == "cpu" or (choice == "auto" and cuda_count == 0):
        return torch.device("cpu")
    if cuda_count == 0:
        build = "" if torch.version.cuda else f"; torch {torch.__version__} is a CPU build"
        raise ValueError(f'device "cuda": torch sees no CUDA device here{build}; use device "cpu" (or "auto")')
    index = local_rank or 0
    if index >= cuda_count:
        raise ValueError(f"torchrun process LOCAL_RANK={index} needs a GPU of its own, but torch sees "
                         f"{cuda_count} here: start at most {cuda_count} processes per node (--nproc_per_node)")
    return torch.device("cuda", index)


def training_device(choice: str) -> torch.device:
    """`choice` resolved for this process; a GPU becomes the current CUDA device (nccl's collectives and
    `torch.device("cuda")` then mean this process's GPU)."""
    import torch

    local_rank = os.environ.get("LOCAL_RANK")
    cuda_count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    device = resolve_device(choice, cuda_count, None if local_rank is None else int(local_rank))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device
