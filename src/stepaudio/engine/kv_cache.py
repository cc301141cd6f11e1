"""Paged KV cache: per-layer pools of fixed-size blocks, and the per-step view the decoder attends through.

Each step builds a `PagedAttention` over the pools with the batch's block tables; it implements the
decoder's KVCache protocol (stepaudio.model.kv_cache), so the model code is the same as for one-shot use.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..model.kv_cache import single_query_attention


class KVPool:
    """Key and value storage [num_blocks * block_size, Hkv, D] for every layer."""

    def __init__(self, num_layers: int, num_blocks: int, block_size: int, num_kv_heads: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device | str):
        shape = (num_blocks * block_size, num_kv_heads, head_dim)
        self.block_size = block_size
        self.num_blocks = num_blocks
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]

    @staticmethod
    def bytes_per_block(num_layers: int, block_size: int, num_kv_heads: int, head_dim: int,
                        dtype: torch.dtype) -> int:
        return 2 * num_layers * block_size * num_kv_heads * head_dim * torch.finfo(dtype).bits // 8


class PagedAttention:
    """One forward step over a batch whose rows each add `T` new tokens after `context_lens - T` cached ones.

    Rows are right-aligned: every row adds the same number of tokens T (a prefill chunk runs alone).
    """

    def __init__(self, pool: KVPool, block_tables: list[list[int]], context_lens: list[int], num_new: int):
        device = pool.keys[0].device
        bs = pool.block_size
        self.pool = pool
        max_len = max(context_lens)
        starts = [n - num_new for n in context_lens]
        # Flat pool index of every position of every row, computed as tensors (per-position Python lists
        # cost milliseconds per step at batch 16). Padded tails point at slot 0 and are masked.
        width = max(len(table) for table in block_tables)
        tables = torch.tensor([table + [0] * (width - len(table)) for table in block_tables], device=device)
        key_pos = torch.arange(max_len, device=device)
        self.read_slots = tables[:, key_pos // bs] * bs + key_pos % bs                 # [B, max_len]
        query_pos = torch.tensor(starts, device=device)[:, None] + torch.arange(num_new, device=device)[None]
        self.write_slots = self.read_slots.gather(1, query_pos).reshape(-1)            # [B * T]
        # One row decoding one token sees its whole context: no mask. Deciding here, not from the shapes in
        # attend(), keeps a compiled decode step free of guards on the batch size.
        self.mask: torch.Tensor | None = None
        if len(context_lens) > 1 or num_new > 1:
            self.mask = (key_pos[None, None, :] <= query_pos[:, :, None])[:, None]  # [B, 1, T, max_len]

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               positions: torch.Tensor) -> torch.Tensor:
        keys, values = self.pool.keys[layer], self.pool.values[layer]
        keys[self.write_slots] = k.transpose(1, 2).reshape(-1, *keys.shape[1:])
        values[self.write_slots] = v.transpose(1, 2).reshape(-1, *values.shape[1:])
        k_all = keys[self.read_slots].transpose(1, 2)  # [B, Hkv, max_len, D]
        v_all = values[self.read_slots].transpose(1, 2)
        if q.shape[2] == 1:
            return single_query_attention(q, k_all, v_all, self.mask)
        return F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=self.mask, enable_gqa=True)
