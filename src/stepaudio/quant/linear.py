"""Quantized Linear layers: integer or FP4 codes and their scales in place of a dense weight.

Which layer a weight gets depends on what torch has a kernel for (measured: benchmarks/bench_quant.py):
- int8, one scale per output channel: `aten._weight_int8pack_mm` (Int8Linear);
- int4, symmetric, groups of 32/64/128/256 (or per channel), out_features a multiple of 16:
  `aten._weight_int4pack_mm_for_cpu` on CPU, `aten._weight_int4pack_mm` on CUDA (Int4Linear);
- anything else (int8 with group scales, other group sizes, NVFP4): the codes stay compressed and are
  dequantised inside the matmul, one layer at a time (DequantLinear, Fp4Linear).
Activations stay in the model's dtype (weight-only, "A16"); the output has the input's dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

INT4_KERNEL_GROUPS = (32, 64, 128, 256)


class QuantLinear(nn.Module):
    """Common part: sizes and the (unquantized) bias, which the loader may assign after construction."""

    def __init__(self, in_features: int, out_features: int, bias: torch.Tensor | None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)

    def _finish(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        y = y.reshape(*x.shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"

    def weight_bytes(self) -> int:
        """Bytes a forward reads for the weight (codes and scales): what the bandwidth limit counts."""
        return sum(b.numel() * b.element_size() for b in self.buffers())


def _expand_groups(scales: torch.Tensor, in_features: int) -> torch.Tensor:
    """Scales [N, G] -> [N, K]: each group's scale repeated over its columns."""
    return scales.repeat_interleave(in_features // scales.shape[1], dim=1)


class Int8Linear(QuantLinear):
    """w = code · scale, one scale per output row; torch's int8 weight-only kernel."""

    def __init__(self, codes: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype):
        super().__init__(codes.shape[1], codes.shape[0], bias)
        self.register_buffer("codes", codes.to(torch.int8).contiguous())
        self.register_buffer("scales", scales.reshape(-1).to(dtype).contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, self.in_features)
        return self._finish(torch.ops.aten._weight_int8pack_mm(x2, self.codes, self.scales.to(x.dtype)), x)


class Int4Linear(QuantLinear):
    """w = code · scale per group (code in -8..7); torch's int4 kernels, which compute (u - 8)·scale + zero
    for unsigned nibbles u = code + 8, so the zero is 0 for symmetric codes."""

    def __init__(self, codes: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype):
        super().__init__(codes.shape[1], codes.shape[0], bias)
        n, k = codes.shape
        self.group_size = int4_kernel_group(n, k, scales.shape[1])
        if self.group_size is None:
            raise ValueError(f"int4 kernel cannot take a [{n}, {k}] weight with {scales.shape[1]} scale groups")
        scales = _expand_groups(scales, k)[:, :: self.group_size]  # per-channel scales become per-group
        unsigned = codes.to(torch.int32).add_(8).contiguous()  # in place: one int32 copy of the codes at a time
        if codes.device.type == "cuda":
            packed = torch.ops.aten._convert_weight_to_int4pack((unsigned[:, ::2] << 4 | unsigned[:, 1::2])
                                                                .to(torch.uint8), 8)
        else:
            packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(unsigned, 1)
        self.register_buffer("packed", packed)
        scale_zero = torch.stack([scales.t(), torch.zeros_like(scales.t())], dim=-1)  # [K/g, N, 2]
        self.register_buffer("scale_zero", scale_zero.to(dtype).contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, self.in_features)
        sz = self.scale_zero.to(x.dtype)
        if x.device.type == "cuda":
            y = torch.ops.aten._weight_int4pack_mm(x2, self.packed, self.group_size, sz)
        else:
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(x2, self.packed, self.group_size, sz)
        return self._finish(y, x)


def int4_kernel_group(out_features: int, in_features: int, num_groups: int) -> int | None:
    """The kernel group size that represents `num_groups` scale groups exactly, or None when there is none."""
    if out_features % 16 or in_features % num_groups:
        return None
    group = in_features // num_groups
    if group in INT4_KERNEL_GROUPS:
        return group
    # Per-channel (or coarse) scales: split each group into kernel-sized groups sharing its scale.
    return next((g for g in reversed(INT4_KERNEL_GROUPS) if group % g == 0), None)


class DequantLinear(QuantLinear):
    """Integer codes [N, K] (int8 storage) with group scales, dequantised per call: no kernel takes them."""

    def __init__(self, codes: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype):
        super().__init__(codes.shape[1], codes.shape[0], bias)
        self.register_buffer("codes", codes.to(torch.int8).contiguous())
        self.register_buffer("scales", scales.to(dtype).contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.codes.to(x.dtype) * _expand_groups(self.scales.to(x.dtype), self.in_features)
        return self._finish(F.linear(x.reshape(-1, self.in_features), weight), x)


class Fp4Linear(QuantLinear):
    """NVFP4 weights (E2M1 codes two per byte, low nibble first; FP8 scales per 16 columns; one fp32 global
    scale): w = value(code) · scale / global_scale, dequantised per call in the activations' dtype, so a
    float32 model computes in float32."""

    def __init__(self, packed: torch.Tensor, scales: torch.Tensor, global_scale: torch.Tensor,
                 bias: torch.Tensor | None):
        super().__init__(packed.shape[1] * 2, packed.shape[0], bias)
        self.register_buffer("packed", packed.to(torch.uint8).contiguous())
        self.register_buffer("scales", scales.contiguous())
        self.register_buffer("global_scale", global_scale.reshape(1).float())

    def dequantized_weight(self, dtype: torch.dtype) -> torch.Tensor:
        from compressed_tensors.compressors.nvfp4.helpers import unpack_fp4_from_uint8

        values = unpack_fp4_from_uint8(self.packed, self.out_features, self.in_features, dtype=dtype)
        scales = (self.scales.to(torch.float32) / self.global_scale).to(dtype)
        return values * _expand_groups(scales, self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.dequantized_weight(x.dtype)
        return self._finish(F.linear(x.reshape(-1, self.in_features), weight), x)


def integer_linear(codes: torch.Tensor, scales: torch.Tensor, num_bits: int, bias: torch.Tensor | None,
                   dtype: torch.dtype) -> QuantLinear:
    """The fastest layer for symmetric integer codes [N, K] with scales [N, G] (G = 1: per channel)."""
    n, k = codes.shape
    if num_bits == 8 and scales.shape[1] == 1:
        return Int8Linear(codes, scales, bias, dtype)
    if num_bits == 4 and int4_kernel_group(n, k, scales.shape[1]) is not None:
        return Int4Linear(codes, scales, bias, dtype)
    return DequantLinear(codes, scales, bias, dtype)
