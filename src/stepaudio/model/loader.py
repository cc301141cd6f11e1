"""Load an official checkpoint folder (config.json + single or sharded safetensors) into StepAudio.

The model is built on the meta device and each tensor is read, cast and placed one at a time, so
peak host memory stays near one copy of the weights in the target dtype (a 33B bf16 checkpoint
never needs an fp32 copy or twice its size).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import safe_open
from tqdm import tqdm

from ..config import StepAudioConfig, load_config
from ..extras import require_extra
from .step_audio import StepAudioForCausalLM

DTYPES = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16,
          "half": torch.float16, "float32": torch.float32, "fp32": torch.float32, "float": torch.float32}

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


class CheckpointError(ValueError):
    """The folder does not hold a loadable Step-Audio checkpoint; the message says what is wrong."""


def resolve_dtype(name: str | torch.dtype | None, config: StepAudioConfig) -> torch.dtype:
    """An explicit dtype wins; otherwise the checkpoint's torch_dtype."""
    if isinstance(name, torch.dtype):
        return name
    key = name or config.torch_dtype
    if key not in DTYPES:
        raise CheckpointError(f"unknown dtype {key!r}; use one of bfloat16, float16, float32")
    return DTYPES[key]


def checkpoint_files(model_dir: Path) -> dict[str, list[str]]:
    """Map each safetensors file to the tensor names it should hold (from the index when sharded)."""
    index = model_dir / INDEX_FILE
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        files: dict[str, list[str]] = {}
        for name, fname in weight_map.items():
            files.setdefault(fname, []).append(name)
        missing = [f for f in files if not (model_dir / f).is_file()]
        if missing:
            raise CheckpointError(f"{model_dir}: shards named in {INDEX_FILE} are missing: {missing}")
        return files
    single = model_dir / SINGLE_FILE
    if single.is_file():
        with safe_open(single, framework="pt") as f:
            return {SINGLE_FILE: list(f.keys())}
    raise CheckpointError(f"{model_dir}: no {SINGLE_FILE} or {INDEX_FILE} found")


def iter_checkpoint_tensors(model_dir: Path, files: dict[str, list[str]]) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (name, tensor) shard by shard; only one tensor is materialised at a time."""
    for fname, names in files.items():
        with safe_open(model_dir / fname, framework="pt") as f:
            for name in names:
                yield name, f.get_tensor(name)


def _check_names(expected: set[str], found: set[str]) -> None:
    missing, unexpected = sorted(expected - found), sorted(found - expected)
    if missing or unexpected:
        raise CheckpointError(f"checkpoint does not match the model: missing tensors {missing}; "
                              f"unexpected tensors {unexpected}")


def _expected_names(model: StepAudioForCausalLM) -> set[str]:
    names = set(model.state_dict().keys())
    if model.config.text.tie_word_embeddings:
        names.discard("lm_head.weight")
    return names


def _assign(model: StepAudioForCausalLM, name: str, tensor: torch.Tensor) -> None:
    module_name, _, attr = name.rpartition(".")
    module = model.get_submodule(module_name)
    current = getattr(module, attr)
    if tuple(current.shape) != tuple(tensor.shape):
        raise CheckpointError(f"tensor {name} has shape {tuple(tensor.shape)}, the config implies "
                              f"{tuple(current.shape)}")
    setattr(module, attr, torch.nn.Parameter(tensor, requires_grad=False))


def is_quantized_checkpoint(model_dir: str | Path) -> bool:
    """Whether config.json carries a quantization_config (a compressed-tensors checkpoint)."""
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        return False
    raw = json.loads(path.read_text())
    return bool(raw.get("quantization_config") or raw.get("compression_config"))


def load_model(model_dir: str | Path, dtype: str | torch.dtype | None = None,
               device: str | torch.device = "cpu", progress: bool = False,
               quantization: str | None = None) -> StepAudioForCausalLM:
    """Load config.json and the safetensors weights; names must match spec §2.2 exactly.

    Quantized checkpoints, and `quantization` ("w8a16" / "w4a16": quantize the decoder's Linears while
    loading), go through stepaudio.quant (the `quant` extra)."""
    model_dir = Path(model_dir)
    if quantization is not None or is_quantized_checkpoint(model_dir):
        require_extra("quant", "quantized weights")
        from ..quant.load import load_quantized_model

        return load_quantized_model(model_dir, dtype, device, progress, quantization)
    config = load_config(model_dir)
    torch_dtype = resolve_dtype(dtype, config)
    files = checkpoint_files(model_dir)
    with torch.device("meta"):
        model = StepAudioForCausalLM(config)
    _check_names(_expected_names(model), {n for names in files.values() for n in names})
    total = sum(len(v) for v in files.values())
    tensors = iter_checkpoint_tensors(model_dir, files)
    for name, tensor in tqdm(tensors, total=total, desc="loading weights", unit="tensor", disable=not progress):
        _assign(model, name, tensor.to(device=device, dtype=torch_dtype))
    if config.text.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    return model.eval()
