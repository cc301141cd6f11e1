"""Every speech engine of the training and evaluation voices makes 16 kHz speech that Whisper-base hears."""

from __future__ import annotations

import numpy as np
import pytest

from stepaudio.train.evaluate import word_errors
from stepaudio.train.speech import FAMILIES, SAMPLE_RATE, family_available, speak

pytest.importorskip("ctranslate2", reason="the Whisper-base check needs ctranslate2 (setup.sh --dev)")

SENTENCES = ("Which planet is called the red planet?", "How many days are there in a week?")
# Whisper-base's word error rate allowed over the two sentences: espeak-ng's and MBROLA's robotic voices
# are harder for it (measured per voice 0.12-0.44), the neural and unit-selection ones are near 0.
MAX_WER = {"espeak": 0.5, "espeak-heldout": 0.7, "espeak-clear": 0.5, "mbrola": 0.5}


@pytest.fixture(scope="module")
def whisper():
    from stepaudio.train.whisper_reference import WhisperTranscriber

    return WhisperTranscriber(threads=2)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_speaks_16khz_speech_that_whisper_base_transcribes(family, whisper):
    missing = family_available(family)
    if missing:
        pytest.skip(f"{family}: {missing}")
    rng = np.random.default_rng(0)
    errors = words = 0
    for text in SENTENCES:
        voice = FAMILIES[family].draw(rng)
        wav = speak(text, voice)
        assert wav.dtype == np.float32 and wav.ndim == 1
        seconds = len(wav) / SAMPLE_RATE  # speak() returns SAMPLE_RATE (16 kHz) audio: the duration is a speech one
        assert 0.8 < seconds < 6.0, (voice, seconds)
        assert 0.05 < np.abs(wav).max() <= 1.0, voice
        e, n = word_errors(whisper.transcribe(wav), text)
        errors, words = errors + e, words + n
    assert errors / words <= MAX_WER.get(family, 0.15), (family, errors, words)
