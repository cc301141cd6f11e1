"""LoRA: a fresh adapter is the identity, and merging a trained pair gives the wrapped layer's output."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from stepaudio.model.lora import LoRALinear, attach_lora, lora_tensors, merge_lora
from stepaudio.model.step_audio import StepAudioForCausalLM
from stepaudio.model.tiny import random_state_dict, tiny_config


def _tiny_model() -> StepAudioForCausalLM:
    config = tiny_config(512)
    model = StepAudioForCausalLM(config)
    model.load_state_dict(random_state_dict(config, seed=0))
    return model


def test_fresh_lora_changes_nothing():
    base = nn.Linear(16, 8)
    x = torch.randn(3, 16)
    expected = base(x)
    assert torch.equal(LoRALinear(base, rank=4, alpha=8)(x), expected)


def test_attach_wraps_every_decoder_projection_and_nothing_else():
    model = _tiny_model()
    wrapped = attach_lora(model, rank=2, alpha=4)
    layers = model.config.text.num_hidden_layers
    assert len(wrapped) == 7 * layers
    assert all(name.startswith("model.layers.") for name in wrapped)
    assert isinstance(model.model.layers[0].mlp.down_proj, LoRALinear)
    assert isinstance(model.adapter.linear1, nn.Linear) and isinstance(model.lm_head, nn.Linear)
    with pytest.raises(ValueError, match="no linear layer"):
        attach_lora(nn.Sequential(nn.ReLU()), rank=2, alpha=4)


def test_merged_weights_reproduce_the_wrapped_model():
    torch.manual_seed(0)
    model = _tiny_model()
    plain = model.state_dict()
    wrapped = attach_lora(model, rank=4, alpha=8)
    for lora in wrapped.values():  # a "trained" adapter: B no longer zero
        nn.init.normal_(lora.lora_B, std=0.05)
    ids = torch.randint(0, 500, (2, 12))
    positions = torch.arange(12)[None].expand(2, -1)
    with torch.no_grad():
        expected = model.compute_logits(model(ids, positions))
    merged_state = {k: v.clone() for k, v in plain.items()}
    assert merge_lora(merged_state, lora_tensors(wrapped), scale=8 / 4) == len(wrapped)
    merged = StepAudioForCausalLM(model.config)
    merged.load_state_dict(merged_state)
    with torch.no_grad():
        got = merged.compute_logits(merged(ids, positions))
    assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()
    unmerged = StepAudioForCausalLM(model.config)
    unmerged.load_state_dict(plain)
    with torch.no_grad():
        before = unmerged.compute_logits(unmerged(ids, positions))
    assert not torch.allclose(got, before, atol=1e-3)  # the merge really changed the model


def test_merge_rejects_a_pair_that_does_not_fit():
    state = {"model.layers.0.mlp.up_proj.weight": torch.zeros(8, 4)}
    with pytest.raises(ValueError, match="shape"):
        merge_lora(state, {"model.layers.0.mlp.up_proj.lora_A": torch.zeros(2, 5),
                           "model.layers.0.mlp.up_proj.lora_B": torch.zeros(8, 2)}, 1.0)
    with pytest.raises(KeyError, match="no matching weight"):
        merge_lora(state, {"model.layers.9.mlp.up_proj.lora_A": torch.zeros(2, 4)}, 1.0)
