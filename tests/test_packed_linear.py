"""Prepacked linears (the CPU decode speed-up) against nn.Linear and against the unpacked model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from model_fixtures import tiny_dir  # noqa: F401  (fixture)
from stepaudio.engine.engine import EngineConfig, LLMEngine
from stepaudio.model.loader import load_model
from stepaudio.model.packed_linear import PackedLinear, bucketed_rows, can_pack, is_packed, pack_decoder
from stepaudio.text.tokenizer import StepTokenizer

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="needs oneDNN (mkldnn)")


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 0.0)])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(3, 5, 96), (1, 100, 96)])   # 15 rows as they are; 100 padded to 104
def test_packed_linear_matches_nn_linear(dtype, tol, bias, shape):
    torch.manual_seed(0)
    linear = nn.Linear(96, 200, bias=bias).to(dtype)
    if not can_pack(linear.weight):
        pytest.skip("oneDNN has no bf16 kernels for this CPU (needs AVX-512 BF16 or AVX-NE-CONVERT)")
    x = torch.randn(*shape, dtype=dtype)
    if bucketed_rows(x.numel() // 96) != x.numel() // 96 and dtype == torch.bfloat16:
        tol = 2 ** -5   # run at another row count oneDNN may block differently: within bf16 rounding
    with torch.inference_mode():
        expected = linear(x)
        got = PackedLinear(linear)(x)
    assert got.shape == expected.shape and got.dtype == dtype
    # bf16: the same oneDNN product either way (exact); fp32: another accumulation order (rounding only).
    assert (got.float() - expected.float()).abs().max() <= tol


def test_row_buckets_bound_the_shapes_and_the_padding():
    # oneDNN keeps memory per input shape run: prefill rows of any length land on few sizes, little padded
    buckets = {rows: bucketed_rows(rows) for rows in range(1, 8193)}
    assert all(b == rows for rows, b in buckets.items() if rows <= 64)   # decode batches run as they are
    assert all(rows <= b <= rows * 1.125 for rows, b in buckets.items())
    assert len(set(buckets.values())) <= 64 + 8 * 7   # 8 per octave above 64 rows


def test_packed_model_logits_match_the_unpacked_model(tiny_dir):
    reference, packed = load_model(tiny_dir, dtype="float32"), load_model(tiny_dir, dtype="float32")
    layers = packed.config.text.num_hidden_layers
    assert pack_decoder(packed) == 7 * layers + 1 and is_packed(packed) and not is_packed(reference)
    assert not any(isinstance(m, PackedLinear) for m in packed.encoder.modules())
    ids = torch.randint(0, 400, (2, 17), generator=torch.Generator().manual_seed(0))
    positions = torch.arange(17)[None].expand(2, -1)
    with torch.inference_mode():
        diff = (packed.compute_logits(packed(ids, positions)) - reference.compute_logits(reference(ids, positions)))
    assert diff.abs().max() <= 1e-4


def test_engine_packs_on_cpu_and_refuses_to_compile_a_packed_model(tiny_dir):
    model = load_model(tiny_dir, dtype="float32")
    tokenizer = StepTokenizer.from_dir(tiny_dir)
    LLMEngine(model, tokenizer, EngineConfig(num_kv_blocks=8))
    assert is_packed(model)
    with pytest.raises(ValueError, match="load the model again"):
        LLMEngine(model, tokenizer, EngineConfig(num_kv_blocks=8, compile_decode=True))
    unpacked = load_model(tiny_dir, dtype="float32")
    LLMEngine(unpacked, tokenizer, EngineConfig(num_kv_blocks=8, pack_weights=False))
    assert not is_packed(unpacked)


def test_bf16_weights_are_packed_only_where_onednn_has_bf16_kernels(tiny_dir):
    """Packing bf16 on a CPU without bf16 kernels raises inside oneDNN; such CPUs keep nn.Linear."""
    model = load_model(tiny_dir, dtype="bfloat16")
    reference = load_model(tiny_dir, dtype="bfloat16")
    supported = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    assert (pack_decoder(model) > 0) == supported
    ids = torch.randint(0, 400, (1, 9), generator=torch.Generator().manual_seed(0))
    positions = torch.arange(9)[None]
    with torch.inference_mode():
        diff = model.compute_logits(model(ids, positions)) - reference.compute_logits(reference(ids, positions))
    assert diff.abs().max() == 0.0
