"""Write a model in the official on-disk format: config.json + (sharded) safetensors + index."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..config import StepAudioConfig
from .loader import INDEX_FILE, SINGLE_FILE


def _split_into_shards(names: list[str], sizes: dict[str, int], num_shards: int) -> list[list[str]]:
    """Greedy contiguous split into shards of roughly equal byte size, keeping the name order."""
    target = sum(sizes.values()) / num_shards
    shards: list[list[str]] = [[]]
    filled = 0
    for name in names:
        if filled >= target * len(shards) and len(shards) < num_shards:
            shards.append([])
        shards[-1].append(name)
        filled += sizes[name]
    return shards


def save_checkpoint(state_dict: dict[str, torch.Tensor], config: StepAudioConfig, out_dir: str | Path,
                    num_shards: int = 1) -> None:
    """Save tensors (already in the dtype to store) as HF-style shards with model.safetensors.index.json."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config.to_json_dict(), indent=2) + "\n")
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    if num_shards <= 1:
        save_file(tensors, str(out / SINGLE_FILE), metadata={"format": "pt"})
        return
    sizes = {k: v.numel() * v.element_size() for k, v in tensors.items()}
    shards = _split_into_shards(list(tensors), sizes, num_shards)
    weight_map = {}
    for i, names in enumerate(shards, start=1):
        fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file({n: tensors[n] for n in names}, str(out / fname), metadata={"format": "pt"})
        weight_map.update({n: fname for n in names})
    index = {"metadata": {"total_size": sum(sizes.values())}, "weight_map": weight_map}
    (out / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
