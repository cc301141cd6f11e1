"""Adaptor (spec §4.2): 25 Hz encoder features -> 12.5 Hz LLM embeddings."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import AudioEncoderConfig


def adaptor_output_lengths(lengths: torch.Tensor, kernel_size: int = 3, stride: int = 2) -> torch.Tensor:
    """Conv1d(k, stride, padding=(k-1)//2) output length."""
    pad = (kernel_size - 1) // 2
    return (lengths + 2 * pad - kernel_size) // stride + 1


class Adaptor(nn.Module):
    """Conv1d(k3, s2) -> GELU -> Linear -> ReLU -> Linear. No norm, as upstream."""

    def __init__(self, cfg: AudioEncoderConfig):
        super().__init__()
        d = cfg.n_audio_state
        self.kernel_size = cfg.kernel_size
        self.stride = cfg.adapter_stride
        self.conv = nn.Conv1d(d, d, cfg.kernel_size, stride=cfg.adapter_stride, padding=(cfg.kernel_size - 1) // 2)
        self.linear1 = nn.Linear(d, cfg.adapter_hidden)
        self.linear2 = nn.Linear(cfg.adapter_hidden, cfg.llm_dim)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.gelu(self.conv(x.transpose(1, 2))).transpose(1, 2)
        x = self.linear2(F.relu(self.linear1(x)))
        return x, adaptor_output_lengths(lengths, self.kernel_size, self.stride)
