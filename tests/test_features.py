"""Log-mel parity with an independent numpy/transformers reference, frame and token counts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from transformers.audio_utils import mel_filter_bank

from stepaudio.audio import (
    SAMPLE_RATE,
    AudioError,
    load_audio,
    log_mel_spectrogram,
    mel_filters,
    num_audio_tokens,
    num_mel_frames,
)

PARITY_ATOL = 1e-4  # fp32 torch vs fp64 numpy; measured at most 6e-5 (speech, 25 s)


def reference_filters(n_mels: int) -> np.ndarray:
    fb = mel_filter_bank(
        num_frequency_bins=201,
        num_mel_filters=n_mels,
        min_frequency=0.0,
        max_frequency=8000.0,
        sampling_rate=16000,
        norm="slaney",
        mel_scale="slaney",
    )
    return fb.T  # [n_mels, 201]


def reference_log_mel(wav: np.ndarray, n_mels: int = 128) -> np.ndarray:
    """The official recipe in float64 numpy: right pad 479, centred reflect-padded Hann STFT."""
    x = np.pad(wav.astype(np.float64), (0, 479))
    x = np.pad(x, (200, 200), mode="reflect")
    n_frames = 1 + (len(x) - 400) // 160
    frames = x[np.arange(400)[None, :] + 160 * np.arange(n_frames)[:, None]]
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(400) / 400)  # periodic Hann
    power = np.abs(np.fft.rfft(frames * window, axis=1)[:-1].T) ** 2
    log_spec = np.log10(np.maximum(reference_filters(n_mels) @ power, 1e-10))
    log_spec = np.maximum(log_spec, log_spec.max() - 8.0)
    return (log_spec + 4.0) / 4.0


def voiced_signal(n: int, seed: int = 0) -> np.ndarray:
    """Speech-like: a gliding harmonic voice at syllable rate, noise between, stretches of digital silence."""
    t = np.arange(n) / SAMPLE_RATE
    f0 = 120 + 30 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    voice = sum(np.sin(k * phase) / k for k in range(1, 30))
    envelope = np.clip(np.sin(2 * np.pi * 3.3 * t), 0, None) ** 2
    noise = np.random.default_rng(seed).standard_normal(n)
    wav = 0.1 * voice * envelope + 0.01 * noise * (1 - envelope)
    wav[t % 2.0 > 1.7] = 0.0
    return wav.astype(np.float32)


def white_noise(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(n).astype(np.float32)


def samples(seconds: float) -> int:
    return round(seconds * SAMPLE_RATE)


def aligned(ref: np.ndarray, x: np.ndarray, max_lag: int = 320) -> tuple[np.ndarray, np.ndarray]:
    """Shift x by its cross-correlation lag against ref, then cut both to a common length."""
    n = min(len(ref), len(x))
    lag = int(np.argmax(np.correlate(x[:n], ref[max_lag : n - max_lag], mode="valid"))) - max_lag
    x = x[lag:] if lag >= 0 else np.pad(x, (-lag, 0))
    n = min(len(ref), len(x))
    return ref[:n], x[:n]


# ----------------------------------------------------------------------------- mel filters


@pytest.mark.parametrize("n_mels", [128, 80])
def test_mel_filters_match_transformers(n_mels: int) -> None:
    ours = mel_filters(n_mels)
    assert ours.shape == (n_mels, 201) and ours.dtype == torch.float32
    np.testing.assert_allclose(ours.numpy(), reference_filters(n_mels), rtol=0, atol=1e-8)


def test_mel_filters_are_cached() -> None:
    assert mel_filters(128) is mel_filters(128, "cpu")
    assert mel_filters(80) is not mel_filters(128)


# ----------------------------------------------------------------------------- log-mel parity


@pytest.mark.parametrize("seconds", [0.3, 1.0, 7.77, 25.0])
@pytest.mark.parametrize("signal", [voiced_signal, white_noise])
def test_log_mel_matches_reference(seconds: float, signal) -> None:
    wav = signal(samples(seconds))
    ours = log_mel_spectrogram(wav).numpy()
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, reference_log_mel(wav), rtol=0, atol=PARITY_ATOL)


@pytest.mark.parametrize("seconds", [1.0, 7.77])
def test_log_mel_80_bins_matches_reference(seconds: float) -> None:
    wav = voiced_signal(samples(seconds))
    ours = log_mel_spectrogram(wav, n_mels=80).numpy()
    np.testing.assert_allclose(ours, reference_log_mel(wav, n_mels=80), rtol=0, atol=PARITY_ATOL)


def test_log_mel_of_real_speech_matches_reference(speech_wav: Path) -> None:
    wav = np.resize(load_audio(speech_wav), samples(25.0))  # the speech repeated to a full chunk
    np.testing.assert_allclose(log_mel_spectrogram(wav).numpy(), reference_log_mel(wav), rtol=0, atol=PARITY_ATOL)


def test_numpy_float64_and_tensor_inputs_agree() -> None:
    wav = voiced_signal(samples(1.0))
    expected = log_mel_spectrogram(wav)
    torch.testing.assert_close(log_mel_spectrogram(torch.from_numpy(wav)), expected, rtol=0, atol=0)
    torch.testing.assert_close(log_mel_spectrogram(wav.astype(np.float64)), expected, rtol=0, atol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_log_mel_on_cuda_matches_cpu() -> None:
    wav = voiced_signal(samples(25.0))
    on_gpu = log_mel_spectrogram(wav, device="cuda")
    assert on_gpu.device.type == "cuda"
    torch.testing.assert_close(on_gpu.cpu(), log_mel_spectrogram(wav), rtol=0, atol=PARITY_ATOL)


# ----------------------------------------------------------------------------- frame and token counts


@pytest.mark.parametrize(("n_samples", "frames"), [(samples(25.0), 2502), (samples(1.0), 102), (1, 3), (161, 4)])
def test_frame_count(n_samples: int, frames: int) -> None:
    assert num_mel_frames(n_samples) == frames
    assert log_mel_spectrogram(voiced_signal(n_samples)).shape == (128, frames)


@pytest.mark.parametrize(
    ("seconds", "vllm", "hf"),
    [(0.5, 7, 6), (1.0, 13, 13), (5.0, 63, 63), (10.0, 125, 125), (25.0, 313, 313), (29.98, 375, 375)],
)
def test_num_audio_tokens(seconds: float, vllm: int, hf: int) -> None:
    frames = num_mel_frames(samples(seconds))
    assert num_audio_tokens(frames) == vllm
    assert num_audio_tokens(frames, formula="vllm") == vllm
    assert num_audio_tokens(frames, formula="hf") == hf


def test_formulas_differ_by_one_token_for_a_quarter_of_lengths() -> None:
    diffs = [num_audio_tokens(n) - num_audio_tokens(n, formula="hf") for n in range(3, 3001)]
    assert set(diffs) == {0, 1}
    assert 0.24 < np.mean(diffs) < 0.26


def test_unknown_token_formula() -> None:
    with pytest.raises(ValueError, match="unknown token formula 'whisper'"):
        num_audio_tokens(100, formula="whisper")


# ----------------------------------------------------------------------------- limits


def test_longest_allowed_chunk_fills_the_encoder() -> None:
    mel = log_mel_spectrogram(voiced_signal(samples(29.98)))
    assert mel.shape == (128, 3000)


@pytest.mark.parametrize("seconds", [30.0, 29.98 + 1 / SAMPLE_RATE])
def test_chunk_over_limit_is_rejected(seconds: float) -> None:
    message = r"audio chunk is \d+\.\d\d s \(\d+ samples\), over the 29\.98 s limit \(479680 samples"
    with pytest.raises(AudioError, match=message):
        log_mel_spectrogram(np.zeros(samples(seconds), dtype=np.float32))


@pytest.mark.parametrize(
    ("wav", "message"),
    [(np.zeros(0, dtype=np.float32), "zero samples"), (np.zeros((2, 400), dtype=np.float32), "1-D")],
)
def test_bad_chunks_are_rejected(wav: np.ndarray, message: str) -> None:
    with pytest.raises(AudioError, match=message):
        log_mel_spectrogram(wav)


# ----------------------------------------------------------------------------- codecs

# Mean |feature difference| against the WAV's features, same speech through each codec at the
# pinned bitrates (tests/conftest.py). Measured with Debian ffmpeg 5.1: flac 0 (bit-identical),
# mp3 0.0130, webm/opus 0.0166 after alignment (0.064 without it: a 3 ms offset, see
# test_audio_io.py). The bounds leave about 50% headroom and still fail for a 3 ms shift.
MAX_MEAN_FEATURE_DIFF = {"flac": 0.0, "mp3": 0.02, "webm": 0.025}


@pytest.mark.parametrize("ext", ["flac", "mp3", "webm"])
def test_codecs_give_nearly_the_same_features(ext: str, speech_wav: Path, encoded_speech) -> None:
    ref, decoded = aligned(load_audio(speech_wav), load_audio(encoded_speech(ext)))
    diff = (log_mel_spectrogram(ref) - log_mel_spectrogram(decoded)).abs()
    assert diff.mean().item() <= MAX_MEAN_FEATURE_DIFF[ext]
