"""Measurements that tests read answers back with: where sound is, its spectral peak, flatness and voiced pitch."""

from __future__ import annotations

import numpy as np

from stepaudio.train.sounds import SAMPLE_RATE

HOP = SAMPLE_RATE // 100  # 10 ms frames


def frame_rms(wav: np.ndarray) -> np.ndarray:
    return np.sqrt([np.mean(wav[i:i + HOP] ** 2) for i in range(0, len(wav) - HOP, HOP)])


def spans(wav: np.ndarray, threshold: float = 0.02, min_frames: int = 5,
          bridge_frames: int = 0) -> list[tuple[int, int]]:
    """(start, end) samples of the stretches whose 10 ms RMS is above `threshold`, gaps of at most
    `bridge_frames` frames bridged (a stop consonant inside a word), stretches under `min_frames` dropped."""
    on = frame_rms(wav) > threshold
    runs, start = [], None
    for i, flag in enumerate(np.append(on, False)):
        if flag and start is None:
            start = i
        elif not flag and start is not None:
            if runs and start - runs[-1][1] <= bridge_frames:
                runs[-1][1] = i
            else:
                runs.append([start, i])
            start = None
    return [(a * HOP, b * HOP) for a, b in runs if b - a >= min_frames]


def segments(wav: np.ndarray) -> list[np.ndarray]:
    """The sounding parts: 10 ms RMS above 0.02 (the noise floor is below 0.006, the quietest tone 0.05)."""
    return [wav[a:b] for a, b in spans(wav)]


def peak_hz(x: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x)), n=1 << 16))
    return float(np.argmax(spectrum) * SAMPLE_RATE / (1 << 16))


def spectral_flatness(x: np.ndarray, frame: int = 512) -> float:
    """Geometric over arithmetic mean of the frame-averaged power spectrum: near 0 for a tone, ~0.5 for white noise."""
    frames = [x[i:i + frame] * np.hanning(frame) for i in range(0, len(x) - frame, frame // 2)]
    power = np.mean([np.abs(np.fft.rfft(f)) ** 2 for f in frames], axis=0)[1:] + 1e-20
    return float(np.exp(np.mean(np.log(power))) / np.mean(power))


def voiced_f0(wav: np.ndarray, fmin: float = 60.0, fmax: float = 400.0) -> float:
    """Median autocorrelation pitch (Hz) over 40 ms frames that are loud and clearly periodic."""
    n, loud = int(0.04 * SAMPLE_RATE), 0.1 * np.abs(wav).max()
    lo, hi = int(SAMPLE_RATE / fmax), int(SAMPLE_RATE / fmin)
    f0s = []
    for i in range(0, len(wav) - n, HOP):
        x = wav[i:i + n] - wav[i:i + n].mean()
        if np.sqrt(np.mean(x ** 2)) < loud:
            continue
        ac = np.correlate(x, x, "full")[n - 1:]
        lag = lo + int(np.argmax(ac[lo:hi]))
        if ac[lag] > 0.5 * ac[0]:
            f0s.append(SAMPLE_RATE / lag)
    return float(np.median(f0s))
