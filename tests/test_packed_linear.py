"""Prepacked linears (the CPU decode speed-up) against nn.Linear and against the unpacked model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from model_fixtures import tiny_dir  # noqa: F401  (fixture)
from stepaudio.engine.engine import EngineConfig, LLMEngine
from stepaudio.model.loader import load_model
from stepaudio.model.packed_linear import PackedLinear, can_pack, is_packed, pack_decoder
from stepaudio.text.tokenizer import StepTokenizer

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="needs oneDNN (mkldnn)")


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 0.0)])
@pytest.mark.parametrize("bias", [True, False])
def test_packed_linear_matches_nn_linear(dtype, tol, bias):
    torch.manual_seed(0)
    linear = nn.Linear(96, 200, bias=bias).to(dtype)
    if not can_pack(linear.weight):
        pytest.skip("oneDNN has no bf16 kernels for this CPU (needs AVX-512 BF16 or AVX-NE-CONVERT)")
    x = torch.randn(3, 5, 96, dtype=dtype)
    with torch.inference_mode():
        expected = linear(x)
        got = PackedLinear(linear)(x)
    assert got.shape == expected.shape and got.dtype == dtype
    # bf16: the same oneDNN product either way (exact); fp32: another accumulation order (rounding only).
    assert (got.float() - expected.float()).abs().max() <= tol


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
