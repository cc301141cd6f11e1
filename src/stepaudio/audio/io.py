"""Audio bytes or files -> mono float32 waveform at 16 kHz, split into model-sized chunks.

Follows the vLLM server that R1's published numbers come from (spec §3.1): librosa.load(mono=True)
averages the channels, then librosa.resample (soxr "HQ", length ceil(n * target / source)).
The HF path takes channel 0 instead of a mix; we follow vLLM.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import av
import numpy as np
import soundfile as sf
import soxr

SAMPLE_RATE = 16000
CHUNK_SECONDS = 25.0  # the official clients cut long audio into 25 s pieces (spec §3.3)
MIN_SAMPLE_RATE = 1000
MAX_SAMPLE_RATE = 768000

AudioSource = bytes | bytearray | str | os.PathLike


class AudioError(ValueError):
    """The audio cannot be used: empty, undecodable, non-finite or at an absurd sample rate."""


class AudioTooLong(AudioError):
    """Longer than the caller allows, found while decoding: a few kilobytes of FLAC can hold hours of silence,
    so the length is checked before all of it is decoded and resampled."""

    def __init__(self, seconds: float, limit: float, exact: bool):
        super().__init__(f"audio is {'' if exact else 'more than '}{seconds:.1f} s long; at most {limit:g} s allowed")
        self.seconds = seconds
        self.exact = exact


def load_audio(source: AudioSource, target_sr: int = SAMPLE_RATE, max_seconds: float | None = None) -> np.ndarray:
    """Decode `source` (encoded bytes or a file path) to a mono float32 waveform at `target_sr`; with
    `max_seconds`, AudioTooLong as soon as the decoder has more than that."""
    _check_sample_rate(target_sr)
    data = _read_bytes(source)
    wav, sr = _decode(data, max_seconds)
    validate_waveform(wav, sr)
    return resample(to_mono(wav), sr, target_sr)


def validate_waveform(wav: np.ndarray, sr: int) -> None:
    """Raise AudioError when a decoded waveform cannot be fed to the model."""
    if wav.size == 0:
        raise AudioError("audio has zero samples")
    _check_sample_rate(sr)
    if not np.isfinite(wav).all():
        raise AudioError("audio contains NaN or infinite samples")


def to_mono(wav: np.ndarray) -> np.ndarray:
    """Average the channels of a [frames, channels] array, as librosa.load(mono=True) does."""
    return wav.mean(axis=1, dtype=np.float32) if wav.ndim == 2 else wav.astype(np.float32, copy=False)


def resample(wav: np.ndarray, sr: int, target_sr: int) -> np.ndarray:
    """Resample 1-D audio with soxr HQ to librosa.resample's output length, ceil(n * target / sr)."""
    if sr == target_sr:
        return wav.astype(np.float32, copy=False)
    out = soxr.resample(wav, sr, target_sr, quality="HQ").astype(np.float32, copy=False)
    return _fit_length(out, -(-len(wav) * target_sr // sr))


def split_chunks(
    wav: np.ndarray, sr: int = SAMPLE_RATE, max_seconds: float = CHUNK_SECONDS
) -> list[np.ndarray]:
    """Cut a waveform into consecutive chunks of int(max_seconds * sr) samples, never an empty one."""
    if wav.ndim != 1:
        raise AudioError(f"expected a 1-D mono waveform, got shape {tuple(wav.shape)}")
    if wav.size == 0:
        raise AudioError("audio has zero samples")
    size = int(max_seconds * sr)
    if size <= 0:
        raise ValueError(f"chunk size must be positive, got {max_seconds} s at {sr} Hz")
    return [wav[start : start + size] for start in range(0, wav.size, size)]


def _fit_length(wav: np.ndarray, n: int) -> np.ndarray:
    """Trim or zero-pad at the end to exactly n samples."""
    if wav.size >= n:
        return wav[:n]
    return np.pad(wav, (0, n - wav.size))


def _check_sample_rate(sr: int) -> None:
    if not MIN_SAMPLE_RATE <= sr <= MAX_SAMPLE_RATE:
        raise AudioError(
            f"sample rate {sr} Hz is outside the supported range {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz"
        )


def _read_bytes(source: AudioSource) -> bytes:
    """Return the encoded audio, reading it from disk when given a path."""
    if isinstance(source, (bytes, bytearray)):
        data, origin = bytes(source), "audio"
    elif isinstance(source, (str, os.PathLike)):
        data, origin = _read_file(Path(source)), f"audio file {os.fspath(source)}"
    else:
        raise TypeError(f"expected bytes or a path, got {type(source).__name__}")
    if not data:
        raise AudioError(f"{origin} is empty (0 bytes)")
    return data


def _read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise AudioError(f"audio file not found: {path}") from None
    except OSError as exc:
        raise AudioError(f"could not read audio file {path}: {exc.strerror or exc}") from None


def _decode(data: bytes, max_seconds: float | None = None) -> tuple[np.ndarray, int]:
    """Decode with soundfile (wav/flac/ogg/mp3), falling back to PyAV for containers it lacks."""
    try:
        return _decode_soundfile(data, max_seconds)
    except sf.LibsndfileError:
        pass
    try:
        return _decode_pyav(data, max_seconds)
    except av.FFmpegError:
        raise AudioError("could not decode audio: not a known format (tried soundfile and PyAV)") from None


def _frame_limit(max_seconds: float | None, sr: int) -> int | None:
    return None if max_seconds is None or sr <= 0 else int(max_seconds * sr)


def _decode_soundfile(data: bytes, max_seconds: float | None) -> tuple[np.ndarray, int]:
    """Return float32 [frames, channels] and the sample rate, reading at most one frame past the limit."""
    with sf.SoundFile(io.BytesIO(data)) as f:
        sr, declared = f.samplerate, f.frames
        limit = _frame_limit(max_seconds, sr)
        wav = f.read(frames=-1 if limit is None else limit + 1, dtype="float32", always_2d=True)
    if limit is not None and len(wav) > limit:
        exact = len(wav) <= declared < 2**62  # the header's count, when it is a real one
        raise AudioTooLong((declared if exact else len(wav)) / sr, max_seconds, exact)
    return wav, sr


def _decode_pyav(data: bytes, max_seconds: float | None) -> tuple[np.ndarray, int]:
    """Decode the first audio stream to float32 [frames, channels] in its first frame's layout and rate."""
    with av.open(io.BytesIO(data)) as container:
        if not container.streams.audio:
            raise AudioError("could not decode audio: the container has no audio stream")
        to_float = av.AudioResampler(format="fltp")  # layout and rate follow the first frame
        frames, count = [], 0
        for frame in container.decode(container.streams.audio[0]):
            frames += to_float.resample(frame)
            count += frame.samples
            limit = _frame_limit(max_seconds, frames[0].sample_rate if frames else 0)
            if limit is not None and count > limit:
                raise AudioTooLong(count / frames[0].sample_rate, max_seconds, exact=False)
        frames += to_float.resample(None)
    if not frames:  # no samples: validate_waveform reports it, whatever the rate
        return np.zeros((0, 1), dtype=np.float32), SAMPLE_RATE
    return np.concatenate([f.to_ndarray() for f in frames], axis=1).T, frames[0].sample_rate
