"""Server-side voice activity detection: when the user starts speaking and when their turn has ended.

silero-vad (its pip wheel ships the model; run through onnxruntime, which piper already needs) scores each
32 ms window at 16 kHz; its VADIterator turns the scores into start/end events, with the end-of-turn
silence as its `min_silence_duration_ms`. When silero-vad is not installed, a plain RMS-energy detector
with the same interface runs instead (and says so in `name`): it cannot tell speech from noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import soxr

VAD_RATE = 16000
WINDOW = 512            # samples per decision at 16 kHz (what silero-vad takes)


@dataclass
class VadEvent:
    kind: str           # "start" or "end"
    ms: int             # position in the audio fed to this detector


class _EnergyIterator:
    """Fallback: a window is speech when its RMS is above `threshold` (full scale 1.0)."""

    def __init__(self, threshold: float, min_silence_ms: int):
        self.threshold = threshold * 0.05   # map the 0..1 speech-probability knob to an RMS level
        self.min_silence = min_silence_ms * VAD_RATE // 1000
        self.triggered, self.silent, self.sample = False, 0, 0

    def __call__(self, window: np.ndarray) -> dict[str, int] | None:
        self.sample += len(window)
        loud = float(np.sqrt(np.mean(window ** 2))) >= self.threshold
        if loud and not self.triggered:
            self.triggered, self.silent = True, 0
            return {"start": self.sample - len(window)}
        if self.triggered:
            self.silent = 0 if loud else self.silent + len(window)
            if self.silent >= self.min_silence:
                self.triggered = False
                return {"end": self.sample - self.silent}
        return None


def _silero_iterator(threshold: float, min_silence_ms: int, pad_ms: int):
    from silero_vad import VADIterator, load_silero_vad

    return VADIterator(load_silero_vad(onnx=True), threshold=threshold, sampling_rate=VAD_RATE,
                       min_silence_duration_ms=min_silence_ms, speech_pad_ms=pad_ms)


class TurnDetector:
    """Feed pcm16 audio at `input_rate`; get speech start and end (end of turn) events."""

    def __init__(self, input_rate: int, threshold: float = 0.5, silence_ms: int = 500, pad_ms: int = 30):
        try:
            import torch

            self._iterator = _silero_iterator(threshold, silence_ms, pad_ms)
            self._to_input = lambda w: torch.from_numpy(w)
            self.name = "silero-vad"
        except ImportError:
            self._iterator = _EnergyIterator(threshold, silence_ms)
            self._to_input = lambda w: w
            self.name = "energy"
        self._resampler = soxr.ResampleStream(input_rate, VAD_RATE, 1, dtype="float32")
        self._pending = np.zeros(0, dtype=np.float32)

    def feed(self, pcm16: bytes) -> list[VadEvent]:
        wav = np.frombuffer(pcm16, dtype="<i2").astype(np.float32) / 32768.0
        self._pending = np.concatenate([self._pending, self._resampler.resample_chunk(wav)])
        events = []
        while len(self._pending) >= WINDOW:
            window, self._pending = self._pending[:WINDOW], self._pending[WINDOW:]
            found = self._iterator(self._to_input(np.ascontiguousarray(window)))
            for kind, sample in (found or {}).items():
                events.append(VadEvent(kind, int(sample) * 1000 // VAD_RATE))
        return events
