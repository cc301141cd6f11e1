"""Turn OpenAI-shaped messages plus decoded audio into what the model eats: token ids and mel chunks."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .audio.features import log_mel_spectrogram, num_audio_tokens
from .text.chat_template import count_audio_parts, render_chat
from .text.tokenizer import StepTokenizer


@dataclass
class PreparedPrompt:
    prompt: str                  # the rendered prompt, one <audio_patch> per audio chunk
    token_ids: list[int]         # with each placeholder expanded to <audio_start> n x <audio_patch> <audio_end>
    mels: list[torch.Tensor]     # [n_mels, L] per audio chunk, in prompt order
    audio_tokens: list[int]      # n per chunk

    @property
    def num_audio_tokens(self) -> int:
        return sum(self.audio_tokens)


def prepare_chat(tokenizer: StepTokenizer, messages: Sequence[dict[str, Any]], audio: Sequence[np.ndarray], *,
                 n_mels: int = 128, formula: str = "vllm", template: str | None = None,
                 tools: list[dict[str, Any]] | None = None, add_generation_prompt: bool = True,
                 continue_final_message: bool = False) -> PreparedPrompt:
    """`audio` holds one 16 kHz waveform (<= 29.98 s) per audio part of `messages`, in order."""
    parts = count_audio_parts(messages)
    if parts != len(audio):
        raise ValueError(f"messages have {parts} audio parts but {len(audio)} waveforms were given")
    prompt = render_chat(messages, tools=tools, add_generation_prompt=add_generation_prompt,
                         continue_final_message=continue_final_message,
                         template=template or tokenizer.chat_template)
    mels = [log_mel_spectrogram(wav, n_mels=n_mels) for wav in audio]
    counts = [num_audio_tokens(m.shape[-1], formula=formula) for m in mels]
    ids = tokenizer.expand_audio(tokenizer.encode(prompt), counts)
    return PreparedPrompt(prompt=prompt, token_ids=ids, mels=mels, audio_tokens=counts)
