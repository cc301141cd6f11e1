"""The decode-step attention against PyTorch's scaled_dot_product_attention (fp32, max abs diff <= 1e-5)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from stepaudio.model.kv_cache import single_query_attention


@pytest.mark.parametrize("heads, kv_heads", [(4, 4), (14, 2), (8, 1)])
def test_single_query_attention_matches_sdpa_with_gqa_and_padding(heads, kv_heads):
    gen = torch.Generator().manual_seed(heads)
    q = torch.randn(3, heads, 1, 16, generator=gen)
    k, v = torch.randn(2, 3, kv_heads, 40, 16, generator=gen)
    lengths = torch.tensor([40, 17, 1])
    mask = (torch.arange(40)[None, :] < lengths[:, None])[:, None, None]  # padded tails hidden
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    assert (single_query_attention(q, k, v, mask) - expected).abs().max() <= 1e-5
    unmasked = F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    assert (single_query_attention(q, k, v) - unmasked).abs().max() <= 1e-5


def test_single_query_attention_keeps_the_input_dtype():
    q = torch.randn(1, 4, 1, 8, dtype=torch.bfloat16)
    k = v = torch.randn(1, 2, 5, 8, dtype=torch.bfloat16)
    out = single_query_attention(q, k, v)
    reference = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), enable_gqa=True)
    assert out.dtype == torch.bfloat16 and (out.float() - reference).abs().max() <= 1e-2
