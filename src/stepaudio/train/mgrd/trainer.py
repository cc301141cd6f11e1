"""One resumable update loop for every stage: seeded steps, state every N steps, a JSONL log, a bar.

A stage gives `step_loss(step)`, which builds that step's global batch from the step number alone (so a
rerun replays the same data) and returns this rank's share of the loss (its part of the sum over the global
batch, divided by the global normaliser: the shares add up to the one-process loss) and a log record.
The loop does the rest: learning rate, backward (DDP or FSDP averages the gradients), clipping, AdamW, saving
(whole tensors, keyed by name, whatever the parallel mode; a state.pt of the releases that keyed AdamW's
state by parameter index is read too).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm import tqdm

from ..training_state import load_training_state, save_training_state
from . import distributed
from .policy import Policy

StepLoss = Callable[[int], tuple[torch.Tensor, dict]]


def _lr_factor(step: int, warmup: int) -> float:
    return min(1.0, (step + 1) / max(1, warmup))


def _resume(policy: Policy, optimizer: torch.optim.Optimizer, state_path: Path, log_path: Path, steps: int) -> int:
    """The step a stage continues from, with its saved tensors and optimizer state loaded (0: a fresh start)."""
    saved = load_training_state(state_path, log_path, steps)
    if saved is None:
        return 0
    optimizer_state = saved["optimizer"]
    if any(isinstance(i, int) for group in optimizer_state["param_groups"] for i in group["params"]):
        optimizer_state = _named_optimizer_state(policy, optimizer, saved, state_path)
    distributed.load_full(policy.model, saved["trainable"])
    distributed.load_optimizer_state(policy.model, optimizer, optimizer_state)
    return int(saved["step"])


def _named_optimizer_state(policy: Policy, optimizer: torch.optim.Optimizer, saved: dict, state_path: Path) -> dict:
    """An index-keyed AdamW state (`optimizer.state_dict()`, what releases before FSDP saved) keyed by
    parameter name, as `distributed.optimizer_state` keys it. Index i of a group is the i-th parameter of
    that group of `policy.parameter_groups()`, whose order has not changed since; the state is mapped only
    where its groups, names and shapes agree with this stage's parameters, else refused in one line."""
    old = saved["optimizer"]
    names = {param: name for name, param in policy.model.named_parameters()}
    groups = [[names[p] for p in group["params"]] for group in optimizer.param_groups]
    shape = {names[p]: p.shape for group in optimizer.param_groups for p in group["params"]}
    name_of = {}
    if [len(g["params"]) for g in old["param_groups"]] == [len(g) for g in groups]:
        name_of = {i: name for g, new in zip(old["param_groups"], groups) for i, name in zip(g["params"], new)}
    state = {name_of.get(i): s for i, s in old["state"].items()}
    agrees = (bool(name_of) and None not in state and set(saved["trainable"]) == set(shape)
              and all(saved["trainable"][n].shape == shape[n] for n in shape)
              and all(s["exp_avg"].shape == shape[n] for n, s in state.items()))
    if not agrees:
        raise ValueError(f"{state_path} was saved by an older stepaudio for other trainable parameters than this "
                         f"stage trains; delete it to start {state_path.parent.name} again from step 0 (finished "
                         f"stages are kept)")
    return {"state": state, "param_groups": [{**g, "params": new} for g, new in zip(old["param_groups"], groups)]}


def _save(policy: Policy, optimizer: torch.optim.Optimizer, state_path: Path, step: int) -> None:
    """Every rank gathers (FSDP's shards are collectives); rank 0 writes."""
    trainable, optimizer_state = policy.trainable_state(), distributed.optimizer_state(policy.model, optimizer)
    if distributed.is_main():
        save_training_state(state_path, step, trainable, optimizer_state)


def train_steps(policy: Policy, step_loss: StepLoss, steps: int, folder: Path, desc: str, save_every: int = 5,
                warmup: int = 0, progress: bool = True, max_grad_norm: float = 1.0) -> None:
    """Run (or resume) `steps` updates of `policy`; state and log live in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    optimizer = torch.optim.AdamW(policy.parameter_groups(), weight_decay=0.0)
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    state_path, log_path = folder / "state.pt", folder / "log.jsonl"
    start = _resume(policy, optimizer, state_path, log_path, steps)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    bar = tqdm(total=steps, initial=start, desc=desc, disable=not progress or not distributed.is_main(),
               file=sys.stderr)
    for step in range(start, steps):
        t0 = time.time()
        for group, base in zip(optimizer.param_groups, base_lrs):
            group["lr"] = base * _lr_factor(step, warmup)
        loss, record = step_loss(step)
        optimizer.zero_grad(set_to_none=True)
        (loss * distributed.world()[1]).backward()  # DDP/FSDP average over ranks; each loss is a share of the sum
        grad_norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        optimizer.step()
        record = {"step": step + 1, "loss": round(distributed.global_sum(float(loss.detach())), 5),
                  "grad_norm": round(float(grad_norm), 4), **record, "seconds": round(time.time() - t0, 2)}
        if distributed.is_main():
            with log_path.open("a") as f:
                f.write(json.dumps(record) + "\n")
        if (step + 1) % save_every == 0 or step + 1 == steps:
            _save(policy, optimizer, state_path, step + 1)
        bar.update()
        bar.set_postfix(loss=f"{record['loss']:.4f}")
    bar.close()
    distributed.barrier()
