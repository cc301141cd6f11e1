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


def slots_for(block_table: list[int], start: int, end: int, block_size: int) -> list[int]:
    """Flat pool indices of token positions start..end-1 of a sequence."""
    return [block_table[p // block_size] * block_size + p % block_size for p in range(start, end)]


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
        self.write_slots = torch.tensor(
            [s for table, st, n in zip(block_tables, starts, context_lens) for s in slots_for(table, st, n, bs)],
            device=device)
        # Gather index [B, max_len] into the pool; padded tails point at slot 0 and are masked.
        rows = [slots_for(table, 0, n, bs) + [0] * (max_len - n) for table, n in zip(block_tables, context_lens)]
        self.read_slots = torch.tensor(rows, device=device)
        # One row decoding one token sees its whole context: no mask. Deciding here, not from the shapes in
        # attend(), keeps a compiled decode step free of guards on the batch size.
        self.mask: torch.Tensor | None = None
        if len(context_lens) > 1 or num_new > 1:
            key_pos = torch.arange(max_len, device=device)
            query_pos = torch.tensor(starts, device=device)[:, None] + torch.arange(num_new, device=device)[None]
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
