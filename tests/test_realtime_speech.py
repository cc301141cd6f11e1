"""Speech in and out of the realtime mode: numbers as words, clause cutting, piper chunks, silero-vad turns."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
import soundfile as sf

from stepaudio.realtime.spoken_text import ClauseSplitter, spoken_form

pytest.importorskip("num2words")


@pytest.mark.parametrize("text, said", [
    ("7 + 5 = 12", "seven plus five equals twelve"),
    ("12 - 4 = 8.", "twelve minus four equals eight."),
    ("3 x 4 = 12 and 10/2 = 5", "three times four equals twelve and ten divided by two equals five"),
    ("It is 3.5% of 1,250.", "It is three point five percent of one thousand, two hundred and fifty."),
    ("the 2nd try, at -4 degrees", "the second try, at minus four degrees"),
    ("2^3 = 8", "two to the power of three equals eight"),
    ("**Answer:** 42", "Answer: forty-two"),
    ("a\x00b\x07c\u200bd\ufeff 1", "a b c d one"),   # what a model may emit and a phonemizer refuses
])
def test_numbers_and_symbols_are_written_as_words(text: str, said: str) -> None:
    assert spoken_form(text) == said


def test_clauses_cut_at_marks_or_word_limits_and_lose_nothing() -> None:
    text = ("First, add seven and five. That gives twelve; then we check it: twelve is right! "
            "now a very long stretch of words without any mark at all that keeps going and going on")
    splitter = ClauseSplitter(max_words=8, first_max_words=3)
    clauses = []
    for i in range(0, len(text), 3):   # streamed in small pieces, as tokens arrive
        clauses += splitter.feed(text[i:i + 3])
    rest = splitter.flush()
    assert "".join(clauses) + rest == text
    assert clauses[:4] == ["First,", " add seven and five.", " That gives twelve;", " then we check it:"]
    assert len(clauses[0].split()) <= 3 and all(len(c.split()) <= 8 for c in clauses)
    assert all(c.rstrip()[-1] in ",.;:!" for c in clauses[:5])


def test_piper_speaks_a_clause_as_24_khz_pcm16() -> None:
    pytest.importorskip("piper")
    from stepaudio.realtime.tts import OUTPUT_RATE, PiperSpeaker

    chunk = PiperSpeaker().speak("7 + 5 = 12.")
    samples = np.frombuffer(chunk.pcm16, dtype="<i2")
    # "seven plus five equals twelve" takes well over a second; the digits alone would be much shorter
    assert 1.2 < chunk.seconds < 4.0 and len(samples) == round(chunk.seconds * OUTPUT_RATE)
    assert np.abs(samples).max() > 3000 and chunk.synthesis_seconds > 0
    assert PiperSpeaker().speak("a\x00b").seconds > 0   # the phonemizer raised on the NUL byte


def test_silero_vad_finds_two_turns_separated_by_silence(tmp_path) -> None:
    pytest.importorskip("silero_vad")
    from stepaudio.realtime.client import pcm16_24k
    from stepaudio.realtime.vad import TurnDetector

    if subprocess.run(["which", "espeak-ng"], capture_output=True).returncode:
        pytest.skip("espeak-ng is not installed")
    path = tmp_path / "q.wav"
    subprocess.run(["espeak-ng", "-w", str(path), "What is seven plus five?"], check=True, capture_output=True)
    wav, sr = sf.read(path, dtype="float32")
    speech, silence = pcm16_24k(wav, sr), bytes(2 * 24000)
    detector = TurnDetector(24000, silence_ms=500)
    assert detector.name == "silero-vad"
    assert detector.feed(silence * 2) == []
    audio = silence + speech + silence + speech + silence
    events = [e for i in range(0, len(audio), 4800) for e in detector.feed(audio[i:i + 4800])]
    assert [e.kind for e in events] == ["start", "end", "start", "end"]
    speech_ms = len(speech) // 48
    first_start, first_end, second_start = (e.ms - 2000 for e in events[:3])   # after the 2 s fed first
    assert abs(first_start - 1000) < 300 and abs(first_end - (1000 + speech_ms)) < 400
    assert abs(second_start - (2000 + speech_ms)) < 300
