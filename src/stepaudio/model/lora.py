"""Low-rank adapters on linear layers (the decoder's, optionally the top encoder blocks'): trained by
`stepaudio train align`, merged at assembly.

A LoRA pair (A [r, in], B [out, r]) adds `scale * B @ A` to a frozen weight, scale = alpha / r. Training
wraps the layers in `LoRALinear`; assembly adds the same product to the stored weights, so the served
model is a plain checkpoint and runs through the same code as any other.
"""

from __future__ import annotations

import math

import torch
from torch import nn

# Every projection of a Qwen2 layer (attention and MLP).
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class LoRALinear(nn.Module):
    """`base(x) + scale * x @ A.T @ B.T`; B starts at zero, so a fresh adapter changes nothing."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.base = base
        self.scale = alpha / rank
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.lora_A.T.to(x.dtype) @ self.lora_B.T.to(x.dtype)) * self.scale


def attach_lora(module: nn.Module, rank: int, alpha: float, targets: tuple[str, ...] = DEFAULT_TARGETS,
                under: str = "model.layers.") -> dict[str, LoRALinear]:
    """Wrap every `nn.Linear` named `*.<target>` under `under`; return them by their original name."""
    wrapped: dict[str, LoRALinear] = {}
    for name, child in list(module.named_modules()):
        if not isinstance(child, nn.Linear) or not name.startswith(under) or name.rsplit(".", 1)[-1] not in targets:
            continue
        parent_name, attr = name.rsplit(".", 1)
        lora = LoRALinear(child, rank, alpha).to(child.weight.device)
        setattr(module.get_submodule(parent_name), attr, lora)
        wrapped[name] = lora
    if not wrapped:
        raise ValueError(f"no linear layer under {under!r} matches {targets}")
    return wrapped


def lora_tensors(wrapped: dict[str, LoRALinear]) -> dict[str, torch.Tensor]:
    """`<layer>.lora_A` / `<layer>.lora_B` tensors, the form stored in the delta file."""
    out = {}
    for name, lora in wrapped.items():
        out[f"{name}.lora_A"] = lora.lora_A.detach()
        out[f"{name}.lora_B"] = lora.lora_B.detach()
    return out


def merge_lora(state: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor], scale: float) -> int:
    """Add `scale * B @ A` (in fp32) to `state[<layer>.weight]` for each stored pair; return how many."""
    merged = 0
    for key in tensors:
        if not key.endswith(".lora_A"):
            continue
        layer = key[: -len(".lora_A")]
        weight_key = f"{layer}.weight"
        if weight_key not in state or f"{layer}.lora_B" not in tensors:
            raise KeyError(f"LoRA pair for {layer!r} has no matching weight or no lora_B")
        weight = state[weight_key]
        delta = tensors[f"{layer}.lora_B"].float() @ tensors[key].float()
        if delta.shape != weight.shape:
            raise ValueError(f"LoRA for {layer!r} has shape {tuple(delta.shape)}, weight {tuple(weight.shape)}")
        state[weight_key] = (weight.float() + scale * delta).to(weight.dtype)
        merged += 1
    return merged
