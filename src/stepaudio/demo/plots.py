"""A picture of each audio input: the waveform above its spectrogram (0-8 kHz), drawn with numpy and Pillow.

People would rather look than read: the picture shows at a glance whether a clip is speech, music,
silence or clipped, and where the 25 s chunk boundaries fall (thin marks under the waveform).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ..audio.io import CHUNK_SECONDS, SAMPLE_RATE

WIDTH, WAVE_HEIGHT, SPEC_HEIGHT = 720, 90, 150
N_FFT, TOP_DB = 512, 80.0
BACKGROUND, WAVE_COLOUR, CHUNK_MARK = (250, 250, 252), (79, 70, 229), (220, 38, 38)
# Dark blue -> violet -> orange -> pale yellow, interpolated for the spectrogram's loudness.
PALETTE = np.array([(12, 7, 60), (86, 25, 120), (180, 54, 100), (245, 125, 40), (252, 240, 160)], dtype=np.float32)


def waveform_strip(wav: np.ndarray, width: int = WIDTH, height: int = WAVE_HEIGHT) -> np.ndarray:
    """RGB rows of the min/max envelope per pixel column, with a red mark at each 25 s chunk boundary."""
    image = np.full((height, width, 3), BACKGROUND, dtype=np.uint8)
    columns = np.array_split(wav, width) if len(wav) >= width else [wav[i:i + 1] for i in range(len(wav))]
    scale = max(float(np.abs(wav).max()), 1e-6)
    middle = (height - 1) / 2
    for x, column in enumerate(columns):
        if column.size:
            top = int(round(middle - column.max() / scale * middle))
            bottom = int(round(middle - column.min() / scale * middle))
            image[top:bottom + 1, x] = WAVE_COLOUR
    seconds = len(wav) / SAMPLE_RATE
    for boundary in np.arange(CHUNK_SECONDS, seconds, CHUNK_SECONDS):
        image[-6:, min(width - 1, int(boundary / seconds * width))] = CHUNK_MARK
    return image


def spectrogram_strip(wav: np.ndarray, width: int = WIDTH, height: int = SPEC_HEIGHT) -> np.ndarray:
    """RGB rows of the log-power spectrogram (low frequencies at the bottom), TOP_DB of range."""
    hop = max(1, len(wav) // width)
    padded = np.pad(wav, (N_FFT // 2, N_FFT // 2 + hop * width))
    frames = np.stack([padded[i * hop:i * hop + N_FFT] for i in range(width)])
    power = np.abs(np.fft.rfft(frames * np.hanning(N_FFT), axis=1)) ** 2
    db = 10 * np.log10(np.maximum(power, 1e-12))
    level = np.clip((db - (db.max() - TOP_DB)) / TOP_DB, 0.0, 1.0).T[::-1]   # [freq, time], high at the top
    rows = np.linspace(0, level.shape[0] - 1, height).astype(int)
    return colourise(level[rows])


def colourise(level: np.ndarray) -> np.ndarray:
    """Values in [0, 1] to RGB through PALETTE."""
    position = level * (len(PALETTE) - 1)
    low = np.floor(position).astype(int).clip(0, len(PALETTE) - 2)
    frac = (position - low)[..., None]
    return (PALETTE[low] * (1 - frac) + PALETTE[low + 1] * frac).astype(np.uint8)


def audio_picture(wav: np.ndarray) -> Image.Image:
    """The waveform over the spectrogram of a 16 kHz mono clip."""
    gap = np.full((4, WIDTH, 3), BACKGROUND, dtype=np.uint8)
    return Image.fromarray(np.concatenate([waveform_strip(wav), gap, spectrogram_strip(wav)]))


def save_audio_picture(wav: np.ndarray, path: Path) -> Path:
    audio_picture(wav).save(path, format="PNG", optimize=True)
    return path
