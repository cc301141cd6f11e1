"""Encoder + adaptor against independent references (fp32).

The Step-Audio encoder is the Qwen2-Audio (Whisper-large-v3-style) encoder: transformers'
Qwen2AudioEncoder with mapped weights must give the same 25 Hz features (max abs diff <= 1e-4).
transformers only accepts exactly 3000 mel frames, so parity runs at that length; output lengths for
shorter inputs are checked against the vLLM token formula.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import Qwen2AudioEncoderConfig
from transformers.models.qwen2_audio.modeling_qwen2_audio import Qwen2AudioEncoder

from model_fixtures import tiny_dir  # noqa: F401  (fixture)
from stepaudio.audio.features import log_mel_spectrogram, num_audio_tokens
from stepaudio.model.loader import load_model

TOL = 1e-4

_RENAMES = [("attn.query", "self_attn.q_proj"), ("attn.key", "self_attn.k_proj"), ("attn.value", "self_attn.v_proj"),
            ("attn.out", "self_attn.out_proj"), ("attn_ln", "self_attn_layer_norm"), ("mlp.0", "fc1"),
            ("mlp.2", "fc2"), ("mlp_ln", "final_layer_norm"), ("blocks.", "layers."),
            ("positional_embedding", "embed_positions"), ("after_norm", "layer_norm")]


def hf_encoder(model) -> Qwen2AudioEncoder:
    cfg = model.config.audio
    hf = Qwen2AudioEncoder(Qwen2AudioEncoderConfig(
        num_mel_bins=cfg.n_mels, d_model=cfg.n_audio_state, encoder_layers=cfg.n_audio_layer,
        encoder_attention_heads=cfg.n_audio_head, encoder_ffn_dim=4 * cfg.n_audio_state,
        max_source_positions=cfg.n_audio_ctx)).eval()
    state = {}
    for name, tensor in model.encoder.state_dict().items():
        for old, new in _RENAMES:
            name = name.replace(old, new)
        state[name] = tensor
    hf.load_state_dict(state, strict=True)
    return hf


def speechlike(seconds: float, seed: int = 0) -> np.ndarray:
    """Amplitude-modulated harmonics plus noise: a deterministic stand-in with speech-like spectra."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    f0 = 140 + 30 * np.sin(2 * np.pi * 0.7 * t)
    wave = sum(np.sin(2 * np.pi * k * np.cumsum(f0) / 16000) / k for k in range(1, 8))
    wave = wave * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)) + 0.05 * rng.standard_normal(t.size)
    return (0.3 * wave / np.abs(wave).max()).astype(np.float32)


@pytest.fixture(scope="module")
def model(tiny_dir):
    return load_model(tiny_dir, dtype="float32")


def test_encoder_matches_qwen2_audio_encoder(model):
    mel = log_mel_spectrogram(speechlike(29.98), n_mels=model.config.audio.n_mels)
    assert mel.shape[-1] == 3000
    with torch.no_grad():
        ours, lens = model.encoder(mel[None], torch.tensor([3000]))
        ref = hf_encoder(model)(mel[None]).last_hidden_state
    assert ours.shape == ref.shape == (1, 750, model.config.audio.n_audio_state)
    assert int(lens[0]) == 750
    assert (ours - ref).abs().max().item() <= TOL


def test_key_padding_mask_matches_masked_reference(model):
    """Frames past the given length are hidden from every query, as with an additive key mask."""
    mel = log_mel_spectrogram(speechlike(29.98, seed=1), n_mels=model.config.audio.n_mels)
    valid_mel = 2400  # even, so exactly the first 1200 post-conv frames are real keys
    keep = torch.arange(1500) < valid_mel // 2
    bias = torch.zeros(1, 1, 1500, 1500).masked_fill(~keep[None, None, None, :], torch.finfo(torch.float32).min)
    with torch.no_grad():
        ours, _ = model.encoder(mel[None], torch.tensor([valid_mel]))
        ref = hf_encoder(model)(mel[None], attention_mask=bias).last_hidden_state
        unmasked, _ = model.encoder(mel[None], torch.tensor([3000]))
    assert (ours - ref).abs().max().item() <= TOL
    assert (ours - unmasked).abs().max().item() > 1e-3  # the mask really changed something


def test_adaptor_matches_functional_reference(model):
    a = model.adapter
    x = torch.randn(1, 41, model.config.audio.n_audio_state, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ours, lens = a(x, torch.tensor([41]))
        h = F.gelu(F.conv1d(x.transpose(1, 2), a.conv.weight, a.conv.bias, stride=2, padding=1)).transpose(1, 2)
        ref = F.linear(F.relu(F.linear(h, a.linear1.weight, a.linear1.bias)), a.linear2.weight, a.linear2.bias)
    assert ours.shape == (1, 21, model.config.text.hidden_size) and int(lens[0]) == 21
    assert (ours - ref).abs().max().item() <= TOL


@pytest.mark.parametrize("seconds,expected", [(0.5, 7), (1.0, 13), (10.0, 125), (25.0, 313), (29.98, 375)])
def test_audio_token_counts(model, seconds, expected):
    mel = log_mel_spectrogram(speechlike(seconds), n_mels=model.config.audio.n_mels)
    (emb,) = model.encode_audio([mel])
    assert emb.shape == (expected, model.config.text.hidden_size)
    assert num_audio_tokens(mel.shape[-1]) == expected


def test_hf_formula_masks_two_frames_and_may_drop_a_token(model):
    mel = log_mel_spectrogram(speechlike(0.5), n_mels=model.config.audio.n_mels)
    (vllm,) = model.encode_audio([mel], formula="vllm")
    (hf,) = model.encode_audio([mel], formula="hf")
    assert (vllm.shape[0], hf.shape[0]) == (7, 6) == (num_audio_tokens(52), num_audio_tokens(52, formula="hf"))
