"""Sound items with exact answers: beeps to count, pitch, loudness, duration and sweep direction.

Every item carries the acoustic facts it was built from (onsets, frequencies, levels, durations), and
its reasoning cites them, so the think block is grounded in what the audio contains. Training and the
held-out set draw tone frequencies from disjoint ranges and use different waveforms.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

SAMPLE_RATE = 16000
TASKS = ("count", "higher", "louder", "longer", "direction")
_TRAIN_FREQ = (250.0, 1200.0)
_HELDOUT_FREQ = (1300.0, 2200.0)
_NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six")


@dataclass
class SoundItem:
    task: str
    wav: np.ndarray
    question: str
    answer: str                 # canonical short answer, e.g. "4", "the second", "rising"
    accept: tuple[str, ...]     # strings that count as correct when found in a reply
    reasoning: str


def tone(freq: float, seconds: float, level_db: float, wave: str, f_end: float | None = None) -> np.ndarray:
    n = int(seconds * SAMPLE_RATE)
    f = np.full(n, freq) if f_end is None else np.geomspace(freq, f_end, n)
    phase = 2 * np.pi * np.cumsum(f) / SAMPLE_RATE
    if wave == "square":
        x = np.sign(np.sin(phase)) * 0.6
    elif wave == "triangle":
        x = 2 / np.pi * np.arcsin(np.sin(phase))
    else:
        x = np.sin(phase)
    ramp = min(n // 2, int(0.01 * SAMPLE_RATE))
    env = np.ones(n)
    env[:ramp] = np.linspace(0, 1, ramp)
    env[n - ramp:] = np.linspace(1, 0, ramp)
    return (x * env * 10 ** (level_db / 20)).astype(np.float32)


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SAMPLE_RATE), np.float32)


def with_noise(wav: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A faint noise floor (-60 to -45 dB), always well below the quietest tone (-26 dB)."""
    return (wav + rng.standard_normal(len(wav)).astype(np.float32) * 10 ** (rng.uniform(-60, -45) / 20)).astype(
        np.float32)


def _params(rng: np.random.Generator, heldout: bool) -> tuple[tuple[float, float], str]:
    return (_HELDOUT_FREQ, "triangle") if heldout else (_TRAIN_FREQ, str(rng.choice(["sine", "square"])))


def count_item(rng: np.random.Generator, heldout: bool = False, n: int | None = None) -> SoundItem:
    (lo, hi), wave = _params(rng, heldout)
    n = int(rng.integers(1, 6)) if n is None else n
    freq, length = float(rng.uniform(lo, hi)), float(rng.uniform(0.1, 0.25))
    parts, onsets = [silence(rng.uniform(0.1, 0.4))], []
    t = len(parts[0]) / SAMPLE_RATE
    for _ in range(n):
        onsets.append(t)
        gap = float(rng.uniform(0.2, 0.45))
        parts += [tone(freq, length, -6, wave), silence(gap)]
        t += length + gap
    times = ", ".join(f"{o:.1f} s" for o in onsets)
    question = str(rng.choice(["How many beeps do you hear?", "Count the beeps in this clip.",
                               "How many tones are played?"] if not heldout else
                              ["How many times does the tone sound?", "What is the number of beeps here?"]))
    reasoning = (f"I listen for separate tones. There is a {freq:.0f} Hz beep, each about {length:.2f} s long, "
                 f"starting at {times}. That is {n} beep{'s' if n > 1 else ''} in total.")
    return SoundItem("count", with_noise(np.concatenate(parts), rng), question, str(n),
                     (str(n), _NUMBER_WORDS[n]), reasoning)


def _pair(rng: np.random.Generator, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    return with_noise(np.concatenate([silence(rng.uniform(0.1, 0.3)), first, silence(rng.uniform(0.3, 0.6)),
                                       second, silence(0.2)]), rng)


def _ordinal_answer(first_wins: bool) -> tuple[str, tuple[str, ...]]:
    return ("the first", ("first",)) if first_wins else ("the second", ("second",))


def _pair_item(task: str, rng: np.random.Generator, heldout: bool, first_wins: bool,
               questions: tuple[tuple[str, ...], tuple[str, ...]], reasoning: str,
               first: np.ndarray, second: np.ndarray) -> SoundItem:
    """A two-tone comparison; `questions` is (training phrasings, held-out phrasings), `reasoning` has {answer}."""
    answer, accept = _ordinal_answer(first_wins)
    question = str(rng.choice(questions[1] if heldout else questions[0]))
    return SoundItem(task, _pair(rng, first, second), question, answer, accept, reasoning.format(answer=answer))


def higher_item(rng: np.random.Generator, heldout: bool = False) -> SoundItem:
    (lo, hi), wave = _params(rng, heldout)
    f1 = float(rng.uniform(lo, hi))
    f2 = f1 * float(rng.choice([-1, 1]) * rng.uniform(0.15, 0.6) + 1)
    f2 = min(max(f2, lo * 0.8), hi * 1.2)
    return _pair_item("higher", rng, heldout, f1 > f2,
                      (("Which tone is higher, the first or the second?",
                        "Is the first or the second tone higher in pitch?"),
                       ("Of the two tones, which has the higher pitch: first or second?",)),
                      f"There are two tones. The first is about {f1:.0f} Hz and the second about {f2:.0f} Hz, "
                      "so {answer} tone is higher.", tone(f1, 0.5, -6, wave), tone(f2, 0.5, -6, wave))


def louder_item(rng: np.random.Generator, heldout: bool = False) -> SoundItem:
    (lo, hi), wave = _params(rng, heldout)
    freq = float(rng.uniform(lo, hi))
    l1 = float(rng.uniform(-20, -3))
    l2 = min(max(l1 + float(rng.choice([-1, 1]) * rng.uniform(8, 18)), -26.0), -1.0)
    return _pair_item("louder", rng, heldout, l1 > l2,
                      (("Which sound is louder, the first or the second?", "Is the first or the second tone louder?"),
                       ("Which of the two tones has more volume: first or second?",)),
                      f"Both tones are about {freq:.0f} Hz. The first peaks near {l1:.0f} dB and the second near "
                      f"{l2:.0f} dB, so {{answer}} is louder.", tone(freq, 0.5, l1, wave), tone(freq, 0.5, l2, wave))


def longer_item(rng: np.random.Generator, heldout: bool = False) -> SoundItem:
    (lo, hi), wave = _params(rng, heldout)
    freq = float(rng.uniform(lo, hi))
    d1 = float(rng.uniform(0.2, 1.4))
    d2 = d1 * float(rng.uniform(1.6, 3.0)) if rng.random() < 0.5 else d1 / float(rng.uniform(1.6, 3.0))
    d2 = max(d2, 0.15)
    return _pair_item("longer", rng, heldout, d1 > d2,
                      (("Which tone lasts longer, the first or the second?", "Is the first or the second tone longer?"),
                       ("Which tone has the longer duration: first or second?",)),
                      f"The first tone lasts about {d1:.1f} s and the second about {d2:.1f} s, "
                      "so {answer} one is longer.", tone(freq, d1, -6, wave), tone(freq, d2, -6, wave))


def direction_item(rng: np.random.Generator, heldout: bool = False) -> SoundItem:
    (lo, hi), wave = _params(rng, heldout)
    f_start = float(rng.uniform(lo, hi))
    rising = bool(rng.random() < 0.5)
    f_end = f_start * float(rng.uniform(1.5, 2.5)) ** (1 if rising else -1)
    seconds = float(rng.uniform(0.8, 2.0))
    answer = "rising" if rising else "falling"
    question = str(rng.choice(["Is the pitch rising or falling?", "Does this sweep go up or down?"]
                              if not heldout else ["Does the tone move up or down in pitch, rising or falling?"]))
    accept = ("rising", "rises", "up") if rising else ("falling", "falls", "down")
    reasoning = (f"I hear one sweep of {seconds:.1f} s that starts near {f_start:.0f} Hz and ends near "
                 f"{f_end:.0f} Hz, so the pitch is {answer}.")
    wav = with_noise(np.concatenate([silence(0.2), tone(f_start, seconds, -6, wave, f_end), silence(0.2)]), rng)
    return SoundItem("direction", wav, question, answer, accept, reasoning)


MAKERS: dict[str, Callable[..., SoundItem]] = {
    "count": count_item, "higher": higher_item, "louder": louder_item, "longer": longer_item,
    "direction": direction_item,
}
CHANCE = {"count": 1 / 5, "higher": 0.5, "louder": 0.5, "longer": 0.5, "direction": 0.5}


def random_sound_item(rng: np.random.Generator, heldout: bool = False, task: str | None = None) -> SoundItem:
    return MAKERS[task or str(rng.choice(TASKS))](rng, heldout)
