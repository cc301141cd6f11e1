"""Log-mel features and audio token counts, exactly as the official Step-Audio front end (spec §3.2, §3.4).

Unlike Whisper there is no padding to 30 s: each chunk is padded with 479 zeros at the end and
normalised on its own (max - 8 clamp over the whole chunk).
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from stepaudio.audio.io import SAMPLE_RATE, AudioError

N_FFT = 400
HOP_LENGTH = 160
RIGHT_PAD = 479  # upstream comment: "align with log-to-mel padding 479"
MAX_CHUNK_SECONDS = 29.98  # vLLM rejects longer items: the encoder has 1500 positions (3000 mel frames)
MAX_CHUNK_SAMPLES = round(MAX_CHUNK_SECONDS * SAMPLE_RATE)
TOKEN_FORMULAS = ("vllm", "hf")

# Slaney's Auditory Toolbox scale: linear below 1 kHz (200/3 Hz per mel), logarithmic above.
_LINEAR_HZ_PER_MEL = 200.0 / 3.0
_LOG_START_HZ = 1000.0
_LOG_START_MEL = _LOG_START_HZ / _LINEAR_HZ_PER_MEL
_LOG_STEP = np.log(6.4) / 27.0


def _hz_to_mel(hz: float | np.ndarray) -> np.ndarray:
    hz = np.asarray(hz, dtype=np.float64)
    log_part = _LOG_START_MEL + np.log(np.maximum(hz, _LOG_START_HZ) / _LOG_START_HZ) / _LOG_STEP
    return np.where(hz < _LOG_START_HZ, hz / _LINEAR_HZ_PER_MEL, log_part)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    log_part = _LOG_START_HZ * np.exp(_LOG_STEP * (np.maximum(mel, _LOG_START_MEL) - _LOG_START_MEL))
    return np.where(mel < _LOG_START_MEL, mel * _LINEAR_HZ_PER_MEL, log_part)


def mel_filters(n_mels: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Slaney mel filterbank [n_mels, N_FFT // 2 + 1], equal to librosa.filters.mel(sr=16000, n_fft=400).

    Cached per (n_mels, device); treat the result as read-only.
    """
    return _cached_mel_filters(n_mels, torch.device(device or "cpu"))


@functools.lru_cache(maxsize=None)
def _cached_mel_filters(n_mels: int, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(_slaney_filterbank(n_mels)).to(device)


def _slaney_filterbank(n_mels: int, sr: int = SAMPLE_RATE, n_fft: int = N_FFT) -> np.ndarray:
    """Triangles evenly spaced on the Slaney mel scale from 0 to sr/2, each scaled to unit area in Hz."""
    fft_hz = np.linspace(0.0, sr / 2, n_fft // 2 + 1)
    edges_hz = _mel_to_hz(np.linspace(0.0, _hz_to_mel(sr / 2), n_mels + 2))
    lower, center, upper = edges_hz[:-2, None], edges_hz[1:-1, None], edges_hz[2:, None]
    rising = (fft_hz - lower) / (center - lower)
    falling = (upper - fft_hz) / (upper - center)
    triangles = np.maximum(0.0, np.minimum(rising, falling))
    return (triangles * (2.0 / (upper - lower))).astype(np.float32)


def log_mel_spectrogram(
    wav: np.ndarray | torch.Tensor, n_mels: int = 128, device: torch.device | str | None = None
) -> torch.Tensor:
    """Log-mel of one chunk of 16 kHz mono audio, float32 [n_mels, num_mel_frames(len(wav))].

    Computed on `device` (default: the tensor's device, or CPU for numpy input).
    """
    audio = _as_audio_tensor(wav, device)
    padded = torch.nn.functional.pad(audio, (0, RIGHT_PAD))
    window = torch.hann_window(N_FFT, device=audio.device)
    stft = torch.stft(
        padded, N_FFT, HOP_LENGTH, window=window, center=True, pad_mode="reflect", return_complex=True
    )
    power = stft[..., :-1].abs() ** 2
    log_spec = (mel_filters(n_mels, audio.device) @ power).clamp(min=1e-10).log10()
    log_spec = torch.maximum(log_spec, log_spec.max() - 8.0)
    return (log_spec + 4.0) / 4.0


def _as_audio_tensor(wav: np.ndarray | torch.Tensor, device: torch.device | str | None) -> torch.Tensor:
    """A float32 1-D tensor on `device`, after checking the chunk fits the encoder."""
    audio = torch.as_tensor(wav, dtype=torch.float32, device=device)
    if audio.ndim != 1:
        raise AudioError(f"expected a 1-D mono waveform, got shape {tuple(audio.shape)}")
    if audio.numel() == 0:
        raise AudioError("audio has zero samples")
    if audio.numel() > MAX_CHUNK_SAMPLES:
        n = audio.numel()
        raise AudioError(
            f"audio chunk is {n / SAMPLE_RATE:.2f} s ({n} samples), over the {MAX_CHUNK_SECONDS} s limit "
            f"({MAX_CHUNK_SAMPLES} samples at {SAMPLE_RATE} Hz); split it with split_chunks first"
        )
    return audio


def num_mel_frames(n_samples: int) -> int:
    """Frames log_mel_spectrogram returns for n_samples: one per hop over the padded signal, last dropped."""
    return (n_samples + RIGHT_PAD) // HOP_LENGTH


def num_audio_tokens(mel_frames: int, formula: str = "vllm") -> int:
    """Number of <audio_patch> tokens for a chunk of `mel_frames` frames.

    "vllm" (default): encoder conv2 (k3 s2 p1) and avg-pool 2, then the adaptor conv (k3 s2 p1).
    This is the count used by the vLLM image that produced R1's published results.
    "hf": the transformers path, which first removes two frames of padding (L - 2); it differs
    from "vllm" by one token for about a quarter of lengths (spec §3.4).
    """
    if formula not in TOKEN_FORMULAS:
        raise ValueError(f"unknown token formula {formula!r}; expected one of {TOKEN_FORMULAS}")
    if mel_frames < 1:
        raise ValueError(f"mel_frames must be positive, got {mel_frames}")
    frames = mel_frames - 2 if formula == "hf" else mel_frames
    encoder_frames = (frames + 1) // 2 // 2
    return (encoder_frames - 1) // 2 + 1
