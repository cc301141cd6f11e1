"""Load a model with quantized decoder Linears, shard by shard like model/loader.py: from a compressed-tensors
checkpoint (the layers its quantization_config names), or from an unquantized one quantized as it is read
(`--quantization`). No Linear's dense weight ever exists for a stored quantized one; with `--quantization`
only one dense weight at a time does.
"""

from __future__ import annotations

from pathlib import Path

import torch
from compressed_tensors.quantization import QuantizationScheme
from torch import nn
from tqdm import tqdm

from ..config import load_config
from ..model.loader import (CheckpointError, _assign, _check_names, _expected_names, checkpoint_files,
                            iter_checkpoint_tensors, resolve_dtype)
from ..model.step_audio import StepAudioForCausalLM
from .format import (build_linear, check_group_size, is_decoder_linear, make_scheme, quantize_weight,
                     quantized_modules, read_quantization_config, stored_names)
from .linear import integer_linear


def load_quantized_model(model_dir: str | Path, dtype: str | torch.dtype | None = None,
                         device: str | torch.device = "cpu", progress: bool = False,
                         quantization: str | None = None, group_size: int | None = None) -> StepAudioForCausalLM:
    """A StepAudio model whose quantized Linears are QuantLinear layers; everything else as load_model."""
    model_dir = Path(model_dir)
    config = load_config(model_dir)
    torch_dtype = resolve_dtype(dtype, config)
    qconfig = read_quantization_config(model_dir)
    if qconfig is not None and quantization is not None:
        raise CheckpointError(f"{model_dir} is already quantized; leave out --quantization")
    files = checkpoint_files(model_dir)
    with torch.device("meta"):
        model = StepAudioForCausalLM(config)
    if qconfig is not None:
        targets = quantized_modules(model, qconfig)
        stored = {name: stored_names(scheme, fmt) for name, (scheme, fmt) in targets.items()}
    else:
        scheme = make_scheme(quantization or "", group_size)
        targets = {name: (scheme, "") for name, m in model.named_modules()
                   if isinstance(m, nn.Linear) and is_decoder_linear(name)}
        check_group_size(scheme, [model.get_submodule(n).in_features for n in targets])
        stored = {name: ("weight",) for name in targets}
    expected = {n for n in _expected_names(model) if n.rpartition(".")[0] not in targets or n.endswith(".bias")}
    expected |= {f"{name}.{attr}" for name, attrs in stored.items() for attr in attrs}
    found = {n for names in files.values() for n in names}
    _check_names(expected, {n for n in found if not _is_activation_param(n, targets)})
    pending: dict[str, dict[str, torch.Tensor]] = {}
    tensors = iter_checkpoint_tensors(model_dir, files)
    for name, tensor in tqdm(tensors, total=len(found), desc="loading weights", unit="tensor", disable=not progress):
        module_name, _, attr = name.rpartition(".")
        if module_name not in targets or attr == "bias":
            _assign(model, name, tensor.to(device=device, dtype=torch_dtype))
        elif attr in stored[module_name]:
            parts = pending.setdefault(module_name, {})
            parts[attr] = tensor.to(device)
            if len(parts) == len(stored[module_name]):
                _swap(model, module_name, pending.pop(module_name), targets[module_name], torch_dtype,
                      qconfig is None)
    if config.text.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    return model.eval()


def _is_activation_param(name: str, targets: dict) -> bool:
    """Activation scales of W4A4 checkpoints (input_global_scale, ...): read past, since we run weight-only."""
    module_name, _, attr = name.rpartition(".")
    return module_name in targets and attr.startswith("input_")


def _swap(model: StepAudioForCausalLM, name: str, tensors: dict[str, torch.Tensor],
          target: tuple[QuantizationScheme, str], dtype: torch.dtype, quantize_now: bool) -> None:
    """Replace the (meta) nn.Linear `name` by its quantized layer; its bias, if already loaded, moves over, and
    one that is still meta is assigned to the new layer when it arrives."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name)
    linear: nn.Linear = getattr(parent, child)
    scheme, fmt = target
    shape = (linear.out_features, linear.in_features)
    if quantize_now:
        if tuple(tensors["weight"].shape) != shape:
            raise CheckpointError(f"tensor {name}.weight has shape {tuple(tensors['weight'].shape)}, the config "
                                  f"implies {shape}")
        codes, scales = quantize_weight(tensors["weight"], scheme.weights, dtype)
        layer = integer_linear(codes, scales, scheme.weights.num_bits, linear.bias, dtype)
    else:
        layer = build_linear(name, tensors, scheme, fmt, shape, linear.bias, dtype)
    setattr(parent, child, layer)
