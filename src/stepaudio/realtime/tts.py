"""Streaming speech out: piper's bundled voice, one clause at a time, as pcm16 mono at the protocol's 24 kHz."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numpy as np

from ..audio.io import resample
from ..train.speech import SynthesisError, piper_voice
from .spoken_text import spoken_form

OUTPUT_RATE = 24000   # the OpenAI Realtime pcm16 rate, both ways


@dataclass
class SpokenChunk:
    text: str             # the model's words this audio says
    pcm16: bytes          # 24 kHz mono int16 little-endian
    synthesis_seconds: float

    @property
    def seconds(self) -> float:
        return len(self.pcm16) / 2 / OUTPUT_RATE


class PiperSpeaker:
    """Loads the voice on first use (1-2 s) so a server without the realtime extra still starts."""

    name = "piper:joe"

    def __init__(self) -> None:
        self._voice = None
        # piper phonemizes through the espeak-ng library, which keeps global state: one clause at a time
        # per process (a clause takes a few tens of ms, so sessions barely wait for each other)
        self._lock = threading.Lock()

    def load(self) -> None:
        if self._voice is None:
            try:
                self._voice = piper_voice()
            except SynthesisError as e:
                raise SynthesisError(f"{e}; the realtime extra installs it: pip install 'stepaudio[realtime]'") from None

    def speak(self, text: str) -> SpokenChunk:
        """Synthesize one clause (blocking: run it in a thread)."""
        self.load()
        start = time.perf_counter()
        words = spoken_form(text)
        with self._lock:
            pieces = [c.audio_int16_bytes for c in self._voice.synthesize(words)] if words else []
        wav = np.frombuffer(b"".join(pieces), dtype=np.int16).astype(np.float32) / 32768.0
        wav = resample(wav, self._voice.config.sample_rate, OUTPUT_RATE)
        pcm16 = (np.clip(wav, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()
        return SpokenChunk(text, pcm16, time.perf_counter() - start)
