"""Turn OpenAI-shaped messages plus decoded audio into what the model eats: token ids and mel chunks."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import base64
import binascii
from urllib.parse import unquote, unquote_to_bytes, urlparse

import numpy as np
import torch

from .audio.features import log_mel_spectrogram, num_audio_tokens
from .audio.io import SAMPLE_RATE, AudioError, AudioTooLong, load_audio, split_chunks
from .text.chat_template import AUDIO_PART_TYPES, count_audio_parts, render_chat
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


def decode_audio_part(part: dict[str, Any], max_seconds: float | None = None) -> np.ndarray:
    """The 16 kHz waveform of one audio content part (offline use: local files are allowed); AudioTooLong
    past `max_seconds` of encoded audio."""
    kind = part.get("type")
    if kind == "input_audio":
        return load_audio(decode_base64((part.get("input_audio") or {}).get("data", "")), max_seconds=max_seconds)
    if kind == "audio_url":
        url = (part.get("audio_url") or {}).get("url", "")
        if url.startswith("data:"):
            return load_audio(decode_data_url(url), max_seconds=max_seconds)
        if url.startswith("file://"):
            return load_audio(unquote(urlparse(url).path), max_seconds=max_seconds)
        raise AudioError(f"audio_url must be a data: or file:// URL offline, got {url[:40]!r}")
    audio = part.get("audio")
    if isinstance(audio, np.ndarray):
        return audio.astype(np.float32, copy=False)
    return load_audio(audio, max_seconds=max_seconds)


def decode_base64(data: str) -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as e:
        raise AudioError(f"audio data is not valid base64: {e}") from None


def decode_data_url(url: str) -> bytes:
    """The bytes of a `data:[<mediatype>][;base64],<data>` URL (base64 or percent-encoded)."""
    header, comma, payload = url.removeprefix("data:").partition(",")
    if not comma:
        raise AudioError("data: URL has no ',' before its data")
    if header.endswith(";base64"):
        return decode_base64(payload)
    return unquote_to_bytes(payload)


def resolve_audio_parts(messages: Sequence[dict[str, Any]], max_chunk_seconds: float = 25.0,
                        max_audio_seconds: float | None = None) -> tuple[list[dict[str, Any]], list[np.ndarray]]:
    """Decode every audio part and cut it into <= 25 s chunks, one audio part per chunk, as the official
    client sends long audio. Returns the rewritten messages and the chunks in prompt order. With
    `max_audio_seconds` (all parts together), AudioTooLong (its seconds: the request's) before decoding more."""
    chunks: list[np.ndarray] = []
    used = 0.0
    out = []
    for message in messages:
        content = message.get("content")
        if not isinstance(content, list):
            out.append(message)
            continue
        parts = []
        for part in content:
            if isinstance(part, dict) and part.get("type") in AUDIO_PART_TYPES:
                left = None if max_audio_seconds is None else max_audio_seconds - used
                try:
                    wav = decode_audio_part(part, left)
                except AudioTooLong as e:
                    raise AudioTooLong(used + e.seconds, max_audio_seconds, e.exact) from None
                used += len(wav) / SAMPLE_RATE
                pieces = split_chunks(wav, max_seconds=max_chunk_seconds)
                chunks += pieces
                parts += [{"type": "audio"}] * len(pieces)
            else:
                parts.append(part)
        out.append({**message, "content": parts})
    return out, chunks
