"""Our Qwen2 decoder against transformers' Qwen2ForCausalLM with the same weights (fp32, max abs diff <= 1e-4)."""

from __future__ import annotations

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from model_fixtures import tiny_dir, tiny_tied_dir  # noqa: F401  (fixtures)
from stepaudio.model.kv_cache import DenseKVCache
from stepaudio.model.loader import load_model

TOL = 1e-4


def hf_reference(model) -> Qwen2ForCausalLM:
    """A transformers Qwen2 with our decoder's weights (names are identical: model.*, lm_head.*)."""
    text = model.config.text
    hf = Qwen2ForCausalLM(Qwen2Config(**text.to_qwen2_dict())).eval()
    state = {k: v for k, v in model.state_dict().items() if k.startswith(("model.", "lm_head."))}
    missing, unexpected = hf.load_state_dict(state, strict=False)
    assert not unexpected
    assert set(missing) <= {"lm_head.weight"} and (not missing or text.tie_word_embeddings)
    return hf


@pytest.fixture(params=["untied", "tied"])
def model_pair(request, tiny_dir, tiny_tied_dir):
    path = tiny_dir if request.param == "untied" else tiny_tied_dir
    model = load_model(path, dtype="float32")
    return model, hf_reference(model)


def test_full_prefill_logits_match_transformers(model_pair):
    model, hf = model_pair
    ids = torch.randint(0, model.config.text.vocab_size, (2, 37), generator=torch.Generator().manual_seed(0))
    positions = torch.arange(37)[None].expand(2, -1)
    with torch.no_grad():
        ours = model.compute_logits(model(ids, positions))
        ref = hf(input_ids=ids).logits
    assert (ours - ref).abs().max().item() <= TOL


def test_cached_incremental_decoding_matches_transformers(model_pair):
    model, hf = model_pair
    cfg = model.config.text
    ids = torch.randint(0, cfg.vocab_size, (1, 30), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = hf(input_ids=ids).logits[0]
        cache = DenseKVCache(cfg.num_hidden_layers, 1, 30, cfg.num_key_value_heads, cfg.head_dim, torch.float32)
        # Prefill 20 tokens, then a 3-token chunk, then one token at a time.
        steps = [(0, 20), (20, 23)] + [(i, i + 1) for i in range(23, 30)]
        for start, end in steps:
            positions = torch.arange(start, end)[None]
            logits = model.compute_logits(model(ids[:, start:end], positions, kv_cache=cache))[0]
            assert (logits - ref[start:end]).abs().max().item() <= TOL, (start, end)


def test_positions_are_explicit(tiny_dir):
    """RoPE is relative: a uniform shift leaves logits unchanged, a gap in positions changes them."""
    model = load_model(tiny_dir, dtype="float32")
    ids = torch.arange(10)[None]
    gapped = torch.cat([torch.arange(5), torch.arange(50, 55)])[None]
    with torch.no_grad():
        base = model.compute_logits(model(ids, torch.arange(10)[None]))
        shifted = model.compute_logits(model(ids, torch.arange(100, 110)[None]))
        gap = model.compute_logits(model(ids, gapped))
    assert (base - shifted).abs().max().item() <= TOL
    assert (base[:, 5:] - gap[:, 5:]).abs().max().item() > 1e-3
