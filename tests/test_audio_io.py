"""Decoding, mono mix, resampling, chunking and error reporting of stepaudio.audio.io."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from stepaudio.audio import SAMPLE_RATE, AudioError, load_audio, split_chunks

# Lossy codecs must still give the same speech: minimum SNR after alignment, measured with
# Debian's ffmpeg 5.1 encoders at the pinned settings (measured: mp3 26.0, vorbis 22.5,
# opus 26.5, aac 35.7 dB). Lossless ones must decode bit-identically to the WAV.
MIN_SNR_DB = {"mp3": 20.0, "ogg": 18.0, "opus": 20.0, "webm": 20.0, "m4a": 28.0}
LOSSLESS = ("flac", "mka")
# WebM/Opus made by ffmpeg 5.1 is read 156 samples at 48 kHz (3.25 ms) late by the ffmpeg 8.1
# inside PyAV: the two versions disagree on the Matroska Opus codec delay. WebM written by PyAV
# itself round-trips with no lag, so the offset is in the file's timestamps, not in our decoder.
MAX_LAG_SAMPLES = {"webm": 64}
MAX_LENGTH_ERROR = int(0.05 * SAMPLE_RATE)  # codec padding, at most one AAC frame (46 ms at 22.05 kHz)


def best_lag(ref: np.ndarray, x: np.ndarray, max_lag: int = 320) -> int:
    """Samples by which x lags ref, by cross-correlation within +-max_lag."""
    n = min(len(ref), len(x))
    corr = np.correlate(x[:n], ref[max_lag : n - max_lag], mode="valid")
    return int(np.argmax(corr)) - max_lag


def snr_db(ref: np.ndarray, x: np.ndarray) -> float:
    n = min(len(ref), len(x))
    noise = np.sum((ref[:n] - x[:n]) ** 2)
    return float(10 * np.log10(np.sum(ref[:n] ** 2) / noise))


def sine(freq: float, seconds: float, sr: int, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(round(seconds * sr)) / sr
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def write_float_wav(path: Path, wav: np.ndarray, sr: int) -> Path:
    sf.write(path, wav, sr, subtype="FLOAT")
    return path


def wav_with_rate(sr: int, n: int = 1600) -> bytes:
    """A valid 16-bit mono PCM WAV whose header claims `sr` (soundfile refuses to write odd rates)."""
    data = (np.sin(np.arange(n) / 5) * 10000).astype("<i2").tobytes()
    fmt = struct.pack("<IHHIIHH", 16, 1, 1, sr, sr * 2, 2, 16)
    body = b"WAVEfmt " + fmt + b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


# ----------------------------------------------------------------------------- decoding


def test_wav_decodes_to_16k_float32_mono(speech_wav: Path) -> None:
    native, sr = sf.read(speech_wav, dtype="float32")
    wav = load_audio(speech_wav)
    assert sr == 22050 and wav.dtype == np.float32 and wav.ndim == 1
    assert len(wav) == -(-len(native) * SAMPLE_RATE // sr)  # librosa.resample's ceil length


@pytest.mark.parametrize("ext", ["flac", "mp3", "ogg", "opus", "webm", "m4a", "mka"])
def test_codecs_decode_the_same_speech_from_bytes_and_path(ext: str, speech_wav: Path, encoded_speech) -> None:
    ref = load_audio(speech_wav)
    path = encoded_speech(ext)
    from_path = load_audio(path)
    from_bytes = load_audio(path.read_bytes())
    assert from_path.dtype == np.float32 and from_path.ndim == 1
    np.testing.assert_array_equal(from_path, from_bytes)
    if ext in LOSSLESS:
        np.testing.assert_array_equal(from_path, ref)
        return
    lag = best_lag(ref, from_path)
    assert abs(lag) <= MAX_LAG_SAMPLES.get(ext, 0)
    assert abs(len(from_path) - len(ref)) <= MAX_LENGTH_ERROR
    assert snr_db(ref, from_path[max(lag, 0) :]) >= MIN_SNR_DB[ext]


def test_bytearray_and_str_path_are_accepted(speech_wav: Path) -> None:
    expected = load_audio(speech_wav)
    np.testing.assert_array_equal(load_audio(bytearray(speech_wav.read_bytes())), expected)
    np.testing.assert_array_equal(load_audio(str(speech_wav)), expected)


# ----------------------------------------------------------------------------- mono mix


def test_stereo_wav_is_averaged_to_mono(tmp_path: Path) -> None:
    left, right = sine(440, 0.5, SAMPLE_RATE), sine(1000, 0.5, SAMPLE_RATE, amplitude=0.25)
    path = write_float_wav(tmp_path / "stereo.wav", np.stack([left, right], axis=1), SAMPLE_RATE)
    np.testing.assert_allclose(load_audio(path), (left + right) / 2, rtol=0, atol=1e-7)


def test_stereo_through_pyav_is_averaged_to_mono(tmp_path: Path, ffmpeg) -> None:
    left, right = sine(440, 0.5, SAMPLE_RATE), sine(1000, 0.5, SAMPLE_RATE, amplitude=0.25)
    src = write_float_wav(tmp_path / "stereo.wav", np.stack([left, right], axis=1), SAMPLE_RATE)
    mka = ffmpeg(src, tmp_path / "stereo.mka", "-c:a", "pcm_f32le")  # soundfile cannot open Matroska
    np.testing.assert_allclose(load_audio(mka), (left + right) / 2, rtol=0, atol=1e-7)


# ----------------------------------------------------------------------------- resampling


@pytest.mark.parametrize("sr", [44100, 22050])
def test_resampling_keeps_frequency_amplitude_and_length(sr: int, tmp_path: Path) -> None:
    path = write_float_wav(tmp_path / f"sine_{sr}.wav", sine(440, 1.0, sr), sr)
    wav = load_audio(path)
    assert len(wav) == SAMPLE_RATE
    spectrum = np.abs(np.fft.rfft(wav))  # 1 Hz bins for one second at 16 kHz
    assert int(np.argmax(spectrum)) == 440
    middle = slice(800, -800)  # away from the filter's edge transients
    np.testing.assert_allclose(wav[middle], sine(440, 1.0, SAMPLE_RATE)[middle], atol=1e-3)


def test_resampled_length_rounds_up_like_librosa(tmp_path: Path) -> None:
    path = write_float_wav(tmp_path / "odd.wav", sine(300, 1001 / 44100, 44100), 44100)
    assert len(load_audio(path)) == 364  # ceil(1001 * 16000 / 44100); soxr alone gives 363


def test_target_rate_is_honoured(speech_wav: Path) -> None:
    native, sr = sf.read(speech_wav, dtype="float32")
    np.testing.assert_array_equal(load_audio(speech_wav, target_sr=sr), native)
    assert len(load_audio(speech_wav, target_sr=8000)) == -(-len(native) * 8000 // sr)


# ----------------------------------------------------------------------------- chunking


@pytest.mark.parametrize(
    ("seconds", "expected_seconds"),
    [(60.0, [25.0, 25.0, 10.0]), (50.0, [25.0, 25.0]), (3.0, [3.0]), (25.0, [25.0])],
)
def test_split_chunks(seconds: float, expected_seconds: list[float]) -> None:
    wav = np.arange(round(seconds * SAMPLE_RATE), dtype=np.float32)
    chunks = split_chunks(wav)
    assert [len(c) / SAMPLE_RATE for c in chunks] == expected_seconds
    np.testing.assert_array_equal(np.concatenate(chunks), wav)


def test_split_chunks_custom_size() -> None:
    chunks = split_chunks(np.zeros(10, dtype=np.float32), sr=4, max_seconds=1.0)
    assert [len(c) for c in chunks] == [4, 4, 2]


@pytest.mark.parametrize(
    ("wav", "message"),
    [(np.zeros(0, dtype=np.float32), "zero samples"), (np.zeros((2, 100), dtype=np.float32), "1-D")],
)
def test_split_chunks_rejects_bad_input(wav: np.ndarray, message: str) -> None:
    with pytest.raises(AudioError, match=message):
        split_chunks(wav)


# ----------------------------------------------------------------------------- errors


def test_empty_bytes() -> None:
    with pytest.raises(AudioError, match=r"^audio is empty \(0 bytes\)$"):
        load_audio(b"")


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.wav"
    path.write_bytes(b"")
    with pytest.raises(AudioError, match=r"empty\.wav is empty \(0 bytes\)"):
        load_audio(path)


def test_wav_with_zero_samples(tmp_path: Path) -> None:
    path = tmp_path / "zero.wav"
    sf.write(path, np.zeros(0, dtype=np.int16), SAMPLE_RATE)
    assert path.stat().st_size > 0  # a header, but no samples
    with pytest.raises(AudioError, match="audio has zero samples"):
        load_audio(path)


def test_undecodable_bytes() -> None:
    noise = np.random.default_rng(0).bytes(4096)
    with pytest.raises(AudioError, match=r"could not decode audio: not a known format \(tried soundfile and PyAV\)"):
        load_audio(noise)


def test_container_without_audio(tmp_path: Path, ffmpeg) -> None:
    video = ffmpeg("color=c=black:s=16x16:d=0.2", tmp_path / "video.mkv", "-c:v", "ffv1", input_format="lavfi")
    with pytest.raises(AudioError, match="no audio stream"):
        load_audio(video)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_samples(bad: float, tmp_path: Path) -> None:
    wav = sine(440, 0.1, SAMPLE_RATE)
    wav[100] = bad
    path = write_float_wav(tmp_path / "bad.wav", wav, SAMPLE_RATE)
    with pytest.raises(AudioError, match="audio contains NaN or infinite samples"):
        load_audio(path)


@pytest.mark.parametrize("sr", [1, 5, 999, 10_000_000])
def test_absurd_sample_rate(sr: int) -> None:
    message = rf"sample rate {sr} Hz is outside the supported range 1000\.\.768000 Hz"
    with pytest.raises(AudioError, match=message):
        load_audio(wav_with_rate(sr))


def test_sane_sample_rate_in_handmade_header() -> None:
    assert len(load_audio(wav_with_rate(8000, n=800))) == 1600


def test_absurd_target_rate(speech_wav: Path) -> None:
    with pytest.raises(AudioError, match="sample rate 0 Hz"):
        load_audio(speech_wav, target_sr=0)


def test_missing_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "missing.wav"
    with pytest.raises(AudioError, match=r"audio file not found: .*nowhere/missing\.wav"):
        load_audio(missing)


def test_directory_path(tmp_path: Path) -> None:
    with pytest.raises(AudioError, match="could not read audio file"):
        load_audio(tmp_path)
