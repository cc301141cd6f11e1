"""Whisper-style audio encoder of Step-Audio (spec §4.1): 100 Hz log-mel in, 25 Hz features out.

Parameter names follow the official checkpoint (`encoder.conv1`, `encoder.blocks.{i}.attn.query`, ...).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import AudioEncoderConfig

# Additive bias for padded keys, as upstream's mask_to_bias.
_MASK_BIAS = -1e10


class EncoderAttention(nn.Module):
    """Bidirectional multi-head attention; the key projection has no bias (as in Whisper)."""

    def __init__(self, d_model: int, n_head: int):
        super().__init__()
        self.n_head = n_head
        self.query = nn.Linear(d_model, d_model)
        self.key = nn.Linear(d_model, d_model, bias=False)
        self.value = nn.Linear(d_model, d_model)
        self.out = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor, key_bias: torch.Tensor | None) -> torch.Tensor:
        b, t, d = x.shape
        h = self.n_head
        # (D/H)^-0.25 on q and on k gives 1/sqrt(D/H) overall, exactly as upstream.
        scale = (d // h) ** -0.25
        q = self.query(x).view(b, t, h, -1).transpose(1, 2) * scale
        k = self.key(x).view(b, t, h, -1).transpose(1, 2) * scale
        v = self.value(x).view(b, t, h, -1).transpose(1, 2)
        # The q and k scaling above replaces SDPA's own; its kernels accumulate the softmax in fp32.
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=key_bias, scale=1.0)
        out = out.transpose(1, 2).reshape(b, t, d)
        return self.out(out)


class ResidualAttentionBlock(nn.Module):
    """Pre-LN transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, d_model: int, n_head: int):
        super().__init__()
        self.attn = EncoderAttention(d_model, n_head)
        self.attn_ln = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model))
        self.mlp_ln = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor, key_bias: torch.Tensor | None) -> torch.Tensor:
        x = x + self.attn(self.attn_ln(x), key_bias)
        return x + self.mlp(self.mlp_ln(x))


def encoder_output_lengths(mel_lengths: torch.Tensor) -> torch.Tensor:
    """Frames after conv2 (stride 2) and the 2x average pool: (L + 1) // 2 // 2."""
    return (mel_lengths + 1) // 2 // 2


class AudioEncoder(nn.Module):
    def __init__(self, cfg: AudioEncoderConfig):
        super().__init__()
        d = cfg.n_audio_state
        self.conv1 = nn.Conv1d(cfg.n_mels, d, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(d, d, kernel_size=3, stride=2, padding=1)
        self.positional_embedding = nn.Embedding(cfg.n_audio_ctx, d)
        self.positional_embedding.weight.requires_grad_(False)
        self.blocks = nn.ModuleList(ResidualAttentionBlock(d, cfg.n_audio_head) for _ in range(cfg.n_audio_layer))
        self.avg_pooler = nn.AvgPool1d(2, stride=2)
        self.after_norm = nn.LayerNorm(d)

    def forward(self, mel: torch.Tensor, mel_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """mel [B, n_mels, T] (zero-padded past each length) -> ([B, T//4-ish, D], lengths at 25 Hz)."""
        t = mel.shape[-1]
        x = F.gelu(self.conv1(mel))
        x = F.gelu(self.conv2(x)).transpose(1, 2)
        t_sub = x.shape[1]
        if t_sub > self.positional_embedding.num_embeddings:
            raise ValueError(f"{t} mel frames exceed the encoder context "
                             f"({2 * self.positional_embedding.num_embeddings} frames, 29.98 s)")
        x = x + self.positional_embedding.weight[:t_sub].to(x.dtype)
        key_bias = self._key_padding_bias(mel_lengths, t, x.dtype)
        for block in self.blocks:
            x = block(x, key_bias)
        x = self.avg_pooler(x.transpose(1, 2)).transpose(1, 2)
        return self.after_norm(x), encoder_output_lengths(mel_lengths)

    @staticmethod
    def _key_padding_bias(mel_lengths: torch.Tensor, t: int, dtype: torch.dtype) -> torch.Tensor | None:
        """Key-padding bias [B,1,1,T'] from pre-conv lengths, subsampled like upstream (mask[(T+1)%2::2])."""
        if bool((mel_lengths >= t).all()):
            return None
        keep = torch.arange(t, device=mel_lengths.device)[None, :] < mel_lengths[:, None]
        keep = keep[:, (t + 1) % 2::2]
        return ((~keep).to(dtype) * _MASK_BIAS)[:, None, None, :]
