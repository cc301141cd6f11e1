"""Log-mel throughput: stepaudio.audio.log_mel_spectrogram vs transformers' WhisperFeatureExtractor.

Both run in this process on the same audio, one chunk per call (as a server featurises each chunk).
WhisperFeatureExtractor pads every input to 30 s (3000 frames) while ours does not pad, so two
cases are reported:
  25 s chunks   what each does with the official 25 s chunk (ours 2502 frames, reference 3000);
  full window   like for like, 3000 frames each: ours on 29.98 s (the longest chunk it accepts,
                which gives exactly 3000 frames), the reference on 30 s.
Throughput is seconds of input audio per second of compute, best of --repeats passes after a warm-up.

    .venv/bin/python benchmarks/bench_features.py [--threads N] [--chunks 20] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from transformers import WhisperFeatureExtractor

from stepaudio.audio import MAX_CHUNK_SECONDS, SAMPLE_RATE, log_mel_spectrogram


def speech_like_noise(n_chunks: int, seconds: float, seed: int = 0) -> list[np.ndarray]:
    """Pink-ish noise under a 4 Hz syllable envelope: a speech-like spectrum and dynamic range."""
    rng = np.random.default_rng(seed)
    n = round(seconds * SAMPLE_RATE)
    freqs = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
    tilt = 1 / np.sqrt(np.maximum(freqs, 50.0))
    envelope = 0.1 + np.clip(np.sin(2 * np.pi * 4.0 * np.arange(n) / SAMPLE_RATE), 0, None)
    chunks = []
    for _ in range(n_chunks):
        noise = np.fft.irfft(np.fft.rfft(rng.standard_normal(n)) * tilt, n)
        wav = noise * envelope
        chunks.append((0.3 * wav / np.abs(wav).max()).astype(np.float32))
    return chunks


def throughput(featurise: Callable[[np.ndarray], object], chunks: list[np.ndarray], repeats: int) -> float:
    """Seconds of audio per second of compute, best of `repeats` passes after one warm-up pass."""
    for chunk in chunks:
        featurise(chunk)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for chunk in chunks:
            featurise(chunk)
        best = min(best, time.perf_counter() - start)
    return sum(len(c) for c in chunks) / SAMPLE_RATE / best


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo where there is one (Linux), else the architecture."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.machine()
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else platform.machine()


def frames_of(featurise: Callable[[np.ndarray], object], chunk: np.ndarray) -> int:
    return int(np.asarray(featurise(chunk)).shape[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="torch threads")
    parser.add_argument("--chunks", type=int, default=20, help="chunks per pass")
    parser.add_argument("--repeats", type=int, default=5, help="timed passes; the best is reported")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    extractor = WhisperFeatureExtractor(feature_size=128)

    def ours(chunk: np.ndarray) -> torch.Tensor:
        return log_mel_spectrogram(chunk)

    def reference(chunk: np.ndarray) -> np.ndarray:
        return extractor(chunk, sampling_rate=SAMPLE_RATE, return_tensors="np")["input_features"]

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {cpu_name()}")
    print(f"{args.chunks} chunks per pass, best of {args.repeats} passes, one chunk per call\n")
    print(f"{'case':<12} {'implementation':<32} {'input':>8} {'frames':>7} {'audio s / s':>12}")
    cases = [
        ("25 s chunks", speech_like_noise(args.chunks, 25.0), speech_like_noise(args.chunks, 25.0)),
        ("full window", speech_like_noise(args.chunks, MAX_CHUNK_SECONDS), speech_like_noise(args.chunks, 30.0)),
    ]
    for case, our_chunks, ref_chunks in cases:
        ours_rate = throughput(ours, our_chunks, args.repeats)
        ref_rate = throughput(reference, ref_chunks, args.repeats)
        for name, fn, chunks, rate in [
            ("stepaudio log_mel_spectrogram", ours, our_chunks, ours_rate),
            ("WhisperFeatureExtractor(128)", reference, ref_chunks, ref_rate),
        ]:
            seconds = len(chunks[0]) / SAMPLE_RATE
            print(f"{case:<12} {name:<32} {seconds:>7.2f}s {frames_of(fn, chunks[0]):>7} {rate:>12.0f}")
        print(f"{case:<12} {'ratio ours / reference':<32} {'':>8} {'':>7} {ours_rate / ref_rate:>11.2f}x\n")


if __name__ == "__main__":
    main()
