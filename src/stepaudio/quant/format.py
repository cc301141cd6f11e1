"""The compressed-tensors on-disk format, through the `compressed-tensors` library: which Linears a checkpoint
quantizes and how (its `quantization_config`), the tensors each one stores, and turning them into our
quantized layers; the schemes `stepaudio quantize` writes.

Supported weight formats: `pack-quantized` and `int-quantized`/`naive-quantized` (symmetric int, channel or
group scales) and `nvfp4-pack-quantized` (NVFP4A16, and NVFP4 W4A4 run weight-only: the activation scales
are read and not used).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from compressed_tensors.compressors import BaseCompressor
from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32
from compressed_tensors.config import CompressionFormat
from compressed_tensors.quantization import (QuantizationArgs, QuantizationConfig, QuantizationScheme,
                                             QuantizationStrategy, QuantizationType)
from compressed_tensors.quantization.lifecycle.forward import quantize
from compressed_tensors.quantization.utils import calculate_qparams
from compressed_tensors.utils.match import match_named_modules
from torch import nn

from ..model.loader import CheckpointError
from .linear import Fp4Linear, QuantLinear, integer_linear

CONFIG_KEYS = ("quantization_config", "compression_config")  # the second is the format's older name
INT_FORMATS = (CompressionFormat.pack_quantized.value, CompressionFormat.int_quantized.value,
               CompressionFormat.naive_quantized.value)
FP4_FORMAT = CompressionFormat.nvfp4_pack_quantized.value
SCHEMES = ("w8a16", "w4a16")
DEFAULT_GROUP_SIZE = {"w8a16": None, "w4a16": 128}  # int8 per channel: the scales the int8 kernel takes
# The decoder's Linears: what `quantize` and `--quantization` quantize (encoder, adaptor, lm_head stay).
DECODER_PREFIX = "model.layers."


def read_quantization_config(model_dir: str | Path) -> QuantizationConfig | None:
    """The checkpoint's quantization_config, validated by the library; None for an unquantized checkpoint."""
    raw = json.loads((Path(model_dir) / "config.json").read_text())
    data = next((raw[k] for k in CONFIG_KEYS if raw.get(k)), None)
    if data is None:
        return None
    if data.get("quant_method", "compressed-tensors") != "compressed-tensors":
        raise CheckpointError(f"{model_dir}: quantization method {data['quant_method']!r} is not supported; "
                              "only compressed-tensors checkpoints are")
    try:
        return QuantizationConfig.model_validate(data)
    except ValueError as e:
        raise CheckpointError(f"{model_dir}: quantization_config is not valid compressed-tensors: "
                              f"{str(e).splitlines()[0]}") from None


def quantized_modules(model: nn.Module, qconfig: QuantizationConfig) -> dict[str, tuple[QuantizationScheme, str]]:
    """Module name -> (scheme, storage format) for every Linear the config quantizes (the library's matching
    of `targets` and `ignore`)."""
    found: dict[str, tuple[QuantizationScheme, str]] = {}
    for scheme in qconfig.config_groups.values():
        fmt = scheme.format or qconfig.format
        for name, module in match_named_modules(model, scheme.targets, qconfig.ignore):
            if isinstance(module, nn.Linear) and scheme.weights is not None:
                found.setdefault(name, (scheme, str(getattr(fmt, "value", fmt))))
    return found


def stored_names(scheme: QuantizationScheme, fmt: str) -> tuple[str, ...]:
    """The tensors a quantized Linear stores in this format (the library's list), without activation ones."""
    try:
        compressor = BaseCompressor.get_value_from_registry(fmt)
    except (KeyError, ValueError):
        raise CheckpointError(f"compressed-tensors format {fmt!r} is not supported; use one of "
                              f"{', '.join(INT_FORMATS + (FP4_FORMAT,))}") from None
    return tuple(n for n in compressor.compression_param_names(scheme) if not n.startswith("input_"))


def build_linear(name: str, tensors: dict[str, torch.Tensor], scheme: QuantizationScheme, fmt: str,
                 shape: tuple[int, int], bias: torch.Tensor | None, dtype: torch.dtype) -> QuantLinear:
    """Our quantized layer for the stored tensors of Linear `name` (shape [out, in]); a clear error when the
    tensors do not fit the scheme or the model."""
    args = scheme.weights
    if not args.symmetric:
        raise CheckpointError(f"{name}: asymmetric weight quantization (zero points) is not supported")
    out_features, in_features = shape
    if fmt == FP4_FORMAT:
        packed, scales = tensors["weight_packed"], tensors["weight_scale"]
        _check_shape(name, "weight_packed", packed, (out_features, in_features // 2))
        _check_shape(name, "weight_scale", scales, (out_features, in_features // args.group_size))
        global_scale = tensors["weight_global_scale"].float()
        _check_finite(name, "weight_global_scale", global_scale)
        _check_finite(name, "weight_scale", scales.float())
        return Fp4Linear(packed, scales, global_scale, bias)
    if fmt not in INT_FORMATS or args.type != QuantizationType.INT:
        raise CheckpointError(f"{name}: {args.type} weights in format {fmt!r} are not supported")
    if fmt == CompressionFormat.pack_quantized.value:
        stored_shape = tuple(int(v) for v in tensors["weight_shape"].tolist())
        if stored_shape != shape:
            raise CheckpointError(f"{name}: weight_shape {stored_shape} does not match the model's {shape}")
        codes = unpack_from_int32(tensors["weight_packed"], args.num_bits, torch.Size(shape))
    else:
        codes = tensors["weight"]
        _check_shape(name, "weight", codes, shape)
    scales = tensors["weight_scale"]
    groups = 1 if args.strategy in (QuantizationStrategy.CHANNEL, QuantizationStrategy.TENSOR) \
        else in_features // args.group_size
    scales = scales.reshape(-1, 1).expand(out_features, 1) if args.strategy == QuantizationStrategy.TENSOR \
        else scales
    _check_shape(name, "weight_scale", scales, (out_features, groups))
    _check_finite(name, "weight_scale", scales.float())
    return integer_linear(codes, scales, args.num_bits, bias, dtype)


def _check_shape(name: str, what: str, tensor: torch.Tensor, expected: tuple[int, ...]) -> None:
    if tuple(tensor.shape) != tuple(expected):
        raise CheckpointError(f"{name}.{what} has shape {tuple(tensor.shape)}, the model and the scheme imply "
                              f"{tuple(expected)}")


def _check_finite(name: str, what: str, tensor: torch.Tensor) -> None:
    if not bool(torch.isfinite(tensor).all()) or bool((tensor <= 0).any()):
        raise CheckpointError(f"{name}.{what} holds non-finite, zero or negative scales: the checkpoint is corrupt")


# ---- our own schemes (stepaudio quantize, --quantization) ---------------------------------------------------

def make_scheme(name: str, group_size: int | None = None) -> QuantizationScheme:
    """w8a16 / w4a16 as a compressed-tensors scheme on every Linear: symmetric int, per output channel when
    group_size is None, else per group of `group_size` input columns; stored as pack-quantized."""
    if name not in SCHEMES:
        raise ValueError(f"unknown quantization scheme {name!r}; use one of {', '.join(SCHEMES)}")
    group_size = group_size if group_size is not None else DEFAULT_GROUP_SIZE[name]
    strategy = QuantizationStrategy.CHANNEL if group_size is None else QuantizationStrategy.GROUP
    weights = QuantizationArgs(num_bits=8 if name == "w8a16" else 4, type=QuantizationType.INT,
                               strategy=strategy, group_size=group_size, symmetric=True, dynamic=False)
    return QuantizationScheme(targets=["Linear"], weights=weights,
                              format=CompressionFormat.pack_quantized.value)


def check_group_size(scheme: QuantizationScheme, in_features: list[int]) -> None:
    """One clear line when the group size cannot split every quantized Linear's input width."""
    group = scheme.weights.group_size
    if group is None:
        return
    bad = sorted({k for k in in_features if k % group})
    if bad:
        raise ValueError(f"--group-size {group} does not divide the decoder's input widths {bad}; "
                         "pick a divisor of them (32, 64 and 128 divide Qwen2 widths)")


def weight_scales(weight: torch.Tensor, args: QuantizationArgs, scale_dtype: torch.dtype) -> torch.Tensor:
    """Scales [N, G] by the library's symmetric min-max rule, rounded to scale_dtype (how they are stored)."""
    w = weight.float()
    n, k = w.shape
    group = k if args.group_size is None else args.group_size
    grouped = w.view(n, k // group, group)
    scales, _ = calculate_qparams(grouped.amin(-1), grouped.amax(-1), args)
    return scales.to(scale_dtype)


def quantize_weight(weight: torch.Tensor, args: QuantizationArgs,
                    scale_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 codes [N, K], scales [N, G] in scale_dtype): the library's rounding in fp32 against the stored
    scales, so codes and scales agree exactly."""
    scales = weight_scales(weight, args, scale_dtype)
    codes = quantize(x=weight.float(), scale=scales.float(), zero_point=None, args=args, dtype=torch.int8)
    return codes, scales


def ignore_list(model: nn.Module) -> list[str]:
    """Every Linear outside the decoder layers, named explicitly (encoder, adaptor, lm_head), as llm-compressor
    writes it, so any reader leaves them in the checkpoint's dtype."""
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and not n.startswith(DECODER_PREFIX)]


def is_decoder_linear(name: str) -> bool:
    return name.startswith(DECODER_PREFIX)
