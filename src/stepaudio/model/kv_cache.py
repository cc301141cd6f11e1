"""KV-cache interface for the decoder, and the simple dense cache used for one-shot generation.

The decoder hands each layer's new keys and values to the cache and lets the cache run attention,
so a paged cache (the engine's) can replace this one without touching the model.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F


class KVCache(Protocol):
    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               positions: torch.Tensor) -> torch.Tensor:
        """Store k, v [B, Hkv, T, D] at `positions` [B, T]; return attention of q [B, H, T, D]."""
        ...


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Attention with no cache: the T new tokens attend causally among themselves."""
    return F.scaled_dot_product_attention(q, k, v, is_causal=q.shape[2] > 1, enable_gqa=True)


def single_query_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                           mask: torch.Tensor | None = None) -> torch.Tensor:
    """Decode-step attention, one query per row: q [B, H, 1, D], k and v [B, Hkv, L, D], mask broadcastable
    to [B, 1, 1, L] (True = visible). Scores and softmax in fp32.

    Two small matmuls over grouped heads: on CPU, SDPA with one query runs 4x (batch 1) to 17x (batch 16,
    masked) slower than this, and decode calls it once per layer per step.
    """
    b, h, _, d = q.shape
    kv_heads = k.shape[1]
    grouped = q.reshape(b, kv_heads, h // kv_heads, d).float()     # heads sharing a KV head side by side
    # Contiguous fp32 copies: k and v are often strided views of a gathered cache, and matmul over strided
    # batches is 8x slower than the copy costs.
    k, v = (t.to(torch.float32, memory_format=torch.contiguous_format) for t in (k, v))
    scores = torch.matmul(grouped, k.transpose(-1, -2)) * d ** -0.5
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    out = torch.matmul(scores.softmax(dim=-1), v)
    return out.reshape(b, h, 1, d).to(q.dtype)


class DenseKVCache:
    """Contiguous per-layer buffers [B, Hkv, max_len, D]; every row of the batch shares positions."""

    def __init__(self, num_layers: int, batch_size: int, max_len: int, num_kv_heads: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device | str = "cpu"):
        shape = (batch_size, num_kv_heads, max_len, head_dim)
        self.max_len = max_len
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               positions: torch.Tensor) -> torch.Tensor:
        start, t = int(positions[0, 0]), q.shape[2]
        end = start + t
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; position {end - 1} is past it")
        self.keys[layer][:, :, start:end] = k
        self.values[layer][:, :, start:end] = v
        keys, values = self.keys[layer][:, :, :end], self.values[layer][:, :, :end]
        if t == 1:
            return single_query_attention(q, keys, values)
        visible = torch.arange(end, device=q.device)[None, :] <= positions[0][:, None]
        return F.scaled_dot_product_attention(q, keys, values, attn_mask=visible, enable_gqa=True)
