"""Writes the README's example clips (run: .venv/bin/python examples/make_examples.py; needs setup.sh --dev).

question.flac: "What is the capital of France?" in SVOX Pico's en-US voice, a voice family the default
model never heard in training. beeps.flac: three 800 Hz beeps (ask "How many beeps do you hear?").
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

from stepaudio.train.sounds import SAMPLE_RATE, silence, tone
from stepaudio.train.speech import Voice, speak

HERE = Path(__file__).resolve().parent


def main() -> None:
    question = speak("What is the capital of France?", Voice("pico", "en-US"))
    sf.write(HERE / "question.flac", question, SAMPLE_RATE)
    beeps = [silence(0.3)]
    for _ in range(3):
        beeps += [tone(800.0, 0.2, -6, "sine"), silence(0.35)]
    sf.write(HERE / "beeps.flac", np.concatenate(beeps).astype(np.float32), SAMPLE_RATE)
    print(f"wrote {HERE / 'question.flac'} and {HERE / 'beeps.flac'}")


if __name__ == "__main__":
    main()
