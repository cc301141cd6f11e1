"""Data parallelism over torch.distributed: started by `torchrun`, gloo on CPU, nccl on GPU (one per process).

Nothing home-made: the process group comes from torchrun's environment, gradients are averaged by
DistributedDataParallel or sharded by FSDP2 (`fully_shard`), whole tensors are read and written through
torch.distributed.checkpoint's state-dict helpers, and the few Python objects the ranks share (rollouts,
counts) go through `all_gather_object` / `all_reduce`. Without torchrun every helper is the identity (one
process).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_optimizer_state_dict, set_model_state_dict,
                                                     set_optimizer_state_dict)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

from .config import check_parallel


def init_from_env(device: torch.device) -> None:
    """Join the process group torchrun describes (RANK/WORLD_SIZE set); no-op otherwise or if joined. The
    backend follows the training device (`train.device.training_device`, already this process's GPU): nccl
    for CUDA, gloo for the CPU, whether or not the machine has a GPU."""
    if "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1 and not dist.is_initialized():
        if device.type == "cuda":
            dist.init_process_group("nccl", device_id=device)
        else:
            dist.init_process_group("gloo")


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
    # nccl reduces only GPU tensors ("cuda": this process's GPU, set by training_device)
    t = torch.tensor([float(value)], dtype=torch.float64, device="cuda" if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(t)
    return float(t.item())


def wrap(module: nn.Module, parallel: str, layers: Sequence[nn.Module]) -> nn.Module:
    """`module` made data-parallel when there is more than one rank (one process: `module` itself).

    "ddp": a full copy per rank. "fsdp": FSDP2 shards each of `layers` (the decoder's, in order) as one unit,
    gathered only while it runs, and `module` itself as the root holding the rest. Some ranks' batches use
    no audio, so the adaptor may go unused on a rank: DDP's find_unused_parameters, FSDP2's zero gradients
    for unused parameters.
    """
    check_parallel(parallel)
    if world()[1] == 1:
        return module
    if parallel == "ddp":
        device = next(module.parameters()).device
        return nn.parallel.DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None,
                                                   find_unused_parameters=True)
    mesh = init_device_mesh(next(module.parameters()).device.type, (world()[1],))
    for layer in layers:
        fully_shard(layer, mesh=mesh)
    layers[0].register_forward_pre_hook(_input_needs_grad, prepend=True)
    fully_shard(module, mesh=mesh)
    module.set_reduce_scatter_unused_params(True)
    return module


def _input_needs_grad(layer: nn.Module, args: tuple) -> tuple | None:
    """FSDP2 reduce-scatters a layer's gradients when backward reaches its input, or at the end of backward
    if the input needs no gradient. Without audio the first layer's input (token embeddings of a frozen
    table) needs none, so on a rank with a text-only batch that layer would reduce out of turn with the
    other ranks (a collective mismatch). Its input asks for a gradient on every rank instead."""
    hidden = args[0]
    if torch.is_grad_enabled() and not hidden.requires_grad:
        return (hidden.detach().requires_grad_(), *args[1:])
    return None


def full_state(module: nn.Module, trainable_only: bool = False) -> dict[str, torch.Tensor]:
    """`module`'s state dict with every tensor whole (FSDP's shards gathered: a collective, so every rank
    calls it); `trainable_only` leaves out the frozen parameters (and gathers none of them)."""
    options = StateDictOptions(full_state_dict=True, ignore_frozen_params=trainable_only)
    return get_model_state_dict(module, options=options)


def load_full(module: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Write whole tensors (any subset of `module`'s state) into it, each rank keeping its shard under FSDP."""
    set_model_state_dict(module, tensors, options=StateDictOptions(full_state_dict=True, strict=False))


def optimizer_state(module: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The optimizer's state with whole tensors, keyed by parameter name (the same in every parallel mode,
    so a stage saved under one world size resumes under another)."""
    return get_optimizer_state_dict(module, optimizer, options=StateDictOptions(full_state_dict=True))


def load_optimizer_state(module: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Restore `optimizer_state`'s result (each rank keeps its shards under FSDP). A parameter with no saved
    entry (no gradient yet when it was saved: the adaptor after text-only batches) is left without state, as
    AdamW leaves it until its first gradient, so the resumed steps are the ones the saved run would take."""
    set_optimizer_state_dict(module, optimizer, state, options=StateDictOptions(full_state_dict=True, strict=False))
    names = {param: name for name, param in module.named_parameters()}
    for group in optimizer.param_groups:
        for param in group["params"]:
            if names[param] not in state["state"]:
                optimizer.state.pop(param, None)


def barrier() -> None:
    if world()[1] > 1:
        dist.barrier()
