"""Data parallelism over torch.distributed: started by `torchrun`, gloo on CPU, nccl on GPU.

Nothing home-made: the process group comes from torchrun's environment, gradients are averaged by
DistributedDataParallel, and the few Python objects the ranks share (rollouts, counts) go through
`all_gather_object` / `all_reduce`. Without torchrun every helper is the identity (one process).
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


def init_from_env() -> None:
    """Join the process group torchrun describes (RANK/WORLD_SIZE set); no-op otherwise or if joined."""
    if "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")


def world() -> tuple[int, int]:
    """(rank, world size)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    return world()[0] == 0


def shard(items: list, rank: int | None = None, size: int | None = None) -> list:
    """This rank's slice of a global batch (every `size`-th item from `rank`)."""
    r, w = world()
    return items[(r if rank is None else rank)::(w if size is None else size)]


def gather(values: list) -> list:
    """Every rank's list, concatenated in the order `shard` cut them (undoes the interleave)."""
    rank, size = world()
    if size == 1:
        return values
    parts: list[Any] = [None] * size
    dist.all_gather_object(parts, values)
    out: list = []
    for i in range(max(len(p) for p in parts)):
        out += [p[i] for p in parts if i < len(p)]
    return out


def global_sum(value: float) -> float:
    """`value` summed over ranks (token or pair counts: the loss normaliser)."""
    if world()[1] == 1:
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t.item())


def wrap(module: nn.Module) -> nn.Module:
    """DDP around `module` when there is more than one rank (some ranks' batches use no audio, so the
    adaptor may go unused on one rank: find_unused_parameters)."""
    if world()[1] == 1:
        return module
    return nn.parallel.DistributedDataParallel(module, find_unused_parameters=True)


def barrier() -> None:
    if world()[1] > 1:
        dist.barrier()
