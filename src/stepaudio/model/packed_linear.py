"""Linear layers with weights prepacked for oneDNN: the CPU decode speed-up.

At batch 1 decoding is a chain of matrix-vector products. On CPUs PyTorch's stock kernel for them reads
weights at about half the memory bandwidth; the same product with the weight reordered once into
oneDNN's blocked layout runs 1.5x (bf16) to 2.2x (fp32) faster on the 2-core dev machine, with bit-identical
bf16 results and fp32 results within rounding (decode figures: docs/PERFORMANCE.md). The swap drops the original weight,
so memory does not grow, except for a tied LM head whose weight the embedding still needs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

PACKABLE_DTYPES = (torch.float32, torch.bfloat16)


class PackedLinear(nn.Module):
    """y = x Wᵀ + b with W held in oneDNN's layout (an opaque tensor: inference only, CPU only)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        with torch.no_grad():
            self.packed_weight = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), 1)
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // self.in_features
        padded = bucketed_rows(rows)
        if padded == rows:
            return torch.ops.mkldnn._linear_pointwise(x, self.packed_weight, self.bias, "none", [], "")
        flat = F.pad(x.reshape(rows, self.in_features), (0, 0, 0, padded - rows))
        out = torch.ops.mkldnn._linear_pointwise(flat, self.packed_weight, self.bias, "none", [], "")[:rows]
        return out.reshape(*x.shape[:-1], self.out_features)


def bucketed_rows(rows: int) -> int:
    """The row count a packed product runs at. oneDNN keeps memory for every input shape it has run (a
    process that prefilled prompts of many lengths grew by hundreds of MB, docs/RELIABILITY.md fix 15), so
    prefill rows are padded up to one of 8 sizes per octave (at most 1/8 more work); up to 64 rows (decode
    batches) run as they are."""
    if rows <= 64:
        return rows
    step = 1 << (rows.bit_length() - 4)
    return -(-rows // step) * step


def can_pack(weight: torch.Tensor) -> bool:
    """CPU weights in fp32, or in bf16 where oneDNN has bf16 kernels for this CPU (AVX-512 BF16 or
    AVX-NE-CONVERT; without them the reorder raises, so such weights stay plain nn.Linear)."""
    if weight.device.type != "cpu" or weight.dtype not in PACKABLE_DTYPES or not torch.backends.mkldnn.is_available():
        return False
    return weight.dtype != torch.bfloat16 or bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def pack_linears(module: nn.Module, skip: tuple[str, ...] = ()) -> int:
    """Replace every packable nn.Linear under `module` by a PackedLinear, except under the direct children
    named in `skip`; returns how many were replaced."""
    replaced = 0
    for name, child in list(module.named_children()):
        if name in skip:
            continue
        if isinstance(child, nn.Linear) and can_pack(child.weight):
            setattr(module, name, PackedLinear(child))
            replaced += 1
        else:
            replaced += pack_linears(child)
    return replaced


def pack_decoder(model: nn.Module) -> int:
    """Pack the LLM's linears (decoder layers and LM head): the weights every decode step reads.

    The audio encoder and adaptor are left alone: they run large matrix products once per chunk, where
    packing gains ~5 %.
    """
    return pack_linears(model, skip=("encoder", "adapter"))


def is_packed(model: nn.Module) -> bool:
    return any(isinstance(m, PackedLinear) for m in model.modules())
