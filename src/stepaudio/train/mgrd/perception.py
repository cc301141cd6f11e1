"""Sound questions beyond `train.sounds`: pitch intervals, tempo, rhythm, noise vs tone, which of two clips.

As in `train.sounds`, each item keeps the values it was built from and its reasoning cites them (Hz, dB and
seconds are the true ones, for the quantity check). Training tones are sine or square at 250-1200 Hz, held-out
tones triangle at 1300-2200 Hz with their own phrasings (`sounds._params`); training noise is white, held-out
noise pink. The answer is one of the item's choices (scored as multiple choice). These generators live here,
not in `train.sounds`, so that `train align` and `train evaluate`, which draw from that module, keep their
seeded streams.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..sounds import SAMPLE_RATE, _ordinal_answer, _pair, _params, silence, tone, with_noise

INTERVALS = {"a semitone": 1, "a fifth": 7, "an octave": 12}     # semitones above the first tone
INTERVAL_BASE = {False: (250.0, 600.0), True: (1300.0, 2200.0)}  # the first tone; training's octave stays <= 1200 Hz
BEEP = 0.08                                                        # seconds per beat


@dataclass
class PerceptionItem:
    task: str
    clips: tuple[np.ndarray, ...]   # one waveform per audio part, in prompt order
    question: str
    answer: str                     # one of `choices`
    choices: tuple[str, ...]        # in prompt order (shuffled)
    reasoning: str                  # cites the true values
    reply: str                      # the answer sentence after the reasoning
    facts: dict = field(default_factory=dict)  # the values it was built from


def shuffled(rng: np.random.Generator, choices: tuple[str, ...]) -> tuple[str, ...]:
    """The options in a random order, so that no position is the answer's."""
    return tuple(choices[int(i)] for i in rng.permutation(len(choices)))


def phrasing(rng: np.random.Generator, heldout: bool, train: tuple[str, ...], held: tuple[str, ...]) -> str:
    """One of the split's question phrasings (held-out items never use a training one)."""
    return str(rng.choice(held if heldout else train))


def interval_item(rng: np.random.Generator, heldout: bool = False) -> PerceptionItem:
    _, wave = _params(rng, heldout)
    f1 = float(rng.uniform(*INTERVAL_BASE[heldout]))
    answer = str(rng.choice(list(INTERVALS)))
    f2 = f1 * 2 ** (INTERVALS[answer] / 12)
    question = phrasing(rng, heldout, ("What interval separates the two tones?",
                                        "How far above the first tone is the second?"),
                         ("By what musical interval does the pitch rise from the first tone to the second?",))
    reasoning = (f"The first tone is about {f1:.0f} Hz and the second about {f2:.0f} Hz, a frequency ratio of "
                 f"{f2 / f1:.2f}, so the second is {answer} above the first.")
    return PerceptionItem("interval", (_pair(rng, tone(f1, 0.5, -6, wave), tone(f2, 0.5, -6, wave)),), question,
                          answer, shuffled(rng, tuple(INTERVALS)), reasoning,
                          f"The second tone is {answer} above the first.", {"freqs": (f1, f2), "wave": wave})


def beat_train(freq: float, wave: str, gaps: list[float]) -> np.ndarray:
    """Beeps of `BEEP` s whose onsets are `gaps` seconds apart (len(gaps) + 1 beeps), ending with the last beep."""
    parts = []
    for gap in gaps:
        parts += [tone(freq, BEEP, -6, wave), silence(gap - BEEP)]
    return np.concatenate(parts + [tone(freq, BEEP, -6, wave)])


def tempo_item(rng: np.random.Generator, heldout: bool = False) -> PerceptionItem:
    (lo, hi), wave = _params(rng, heldout)
    freq = float(rng.uniform(lo, hi))
    slow = float(rng.uniform(0.4, 0.7))
    fast = slow / float(rng.uniform(1.4, 2.0))
    first_faster = bool(rng.random() < 0.5)
    gaps = (fast, slow) if first_faster else (slow, fast)
    counts = (int(rng.integers(4, 7)), int(rng.integers(4, 7)))
    trains = [beat_train(freq, wave, [g] * (n - 1)) for g, n in zip(gaps, counts)]
    wav = with_noise(np.concatenate([silence(rng.uniform(0.1, 0.3)), trains[0], silence(rng.uniform(1.2, 1.5)),
                                     trains[1], silence(0.2)]), rng)
    answer, _ = _ordinal_answer(first_faster)
    question = phrasing(rng, heldout, ("Which beat is faster, the first or the second?",
                                        "Two beat trains play one after the other. Which one is faster?"),
                         ("Of the two rhythms, which has the quicker tempo: the first or the second?",))
    reasoning = (f"I hear two trains of {freq:.0f} Hz beeps. The first has {counts[0]} beeps {gaps[0]:.2f} s apart "
                 f"and the second {counts[1]} beeps {gaps[1]:.2f} s apart, so {answer} is faster.")
    return PerceptionItem("tempo", (wav,), question, answer, shuffled(rng, ("the first", "the second")), reasoning,
                          f"{answer.capitalize()} beat is faster.", {"gaps": gaps, "counts": counts, "freq": freq})


def rhythm_item(rng: np.random.Generator, heldout: bool = False) -> PerceptionItem:
    (lo, hi), wave = _params(rng, heldout)
    freq, n = float(rng.uniform(lo, hi)), int(rng.integers(5, 8))
    base = float(rng.uniform(0.3, 0.6))
    even = bool(rng.random() < 0.5)
    if even:
        gaps = [base] * (n - 1)
    else:  # at least one long (x1.4-1.7) and one short (x0.6-0.75) gap: the longest is >= 1.87 x the shortest
        longs = int(rng.integers(1, n - 1))
        factors = [float(rng.uniform(1.4, 1.7)) for _ in range(longs)]
        factors += [float(rng.uniform(0.6, 0.75)) for _ in range(n - 1 - longs)]
        gaps = [base * factors[int(i)] for i in rng.permutation(n - 1)]
    lead = float(rng.uniform(0.1, 0.3))
    wav = with_noise(np.concatenate([silence(lead), beat_train(freq, wave, gaps), silence(0.2)]), rng)
    answer = "evenly spaced" if even else "uneven"
    onsets = lead + np.concatenate([[0.0], np.cumsum(gaps)])
    question = phrasing(rng, heldout, ("Are the beats evenly spaced or uneven?", "Is this rhythm steady or uneven?"),
                         ("Do the beeps come at regular intervals, evenly spaced, or are they uneven?",))
    reasoning = (f"I hear {n} beeps of {freq:.0f} Hz starting at {', '.join(f'{t:.2f} s' for t in onsets)}; the gaps "
                 f"between them are {', '.join(f'{g:.2f} s' for g in gaps)}, so the beats are {answer}.")
    return PerceptionItem("rhythm", (wav,), question, answer, shuffled(rng, ("evenly spaced", "uneven")), reasoning,
                          f"The beats are {answer}.", {"gaps": tuple(gaps), "freq": freq})


def noise(seconds: float, level_db: float, pink: bool, rng: np.random.Generator) -> np.ndarray:
    """White or pink (power falling as 1/f) noise whose RMS is a sine's at `level_db` peak, with 10 ms ramps."""
    n = int(seconds * SAMPLE_RATE)
    x = rng.standard_normal(n)
    if pink:
        spectrum = np.fft.rfft(x)
        spectrum[1:] /= np.sqrt(np.arange(1, len(spectrum)))
        spectrum[0] = 0
        x = np.fft.irfft(spectrum, n)
    ramp = np.minimum(1.0, np.minimum(np.arange(n), np.arange(n)[::-1]) / (0.01 * SAMPLE_RATE))
    return (x / np.sqrt(np.mean(x ** 2)) * ramp * 10 ** (level_db / 20) / np.sqrt(2)).astype(np.float32)


def noise_item(rng: np.random.Generator, heldout: bool = False) -> PerceptionItem:
    (lo, hi), wave = _params(rng, heldout)
    freq, seconds, level = float(rng.uniform(lo, hi)), float(rng.uniform(0.6, 1.5)), float(rng.uniform(-20, -10))
    is_tone = bool(rng.random() < 0.5)
    sound = tone(freq, seconds, level, wave) if is_tone else noise(seconds, level, heldout, rng)
    wav = with_noise(np.concatenate([silence(rng.uniform(0.1, 0.3)), sound, silence(0.2)]), rng)
    answer = "a steady tone" if is_tone else "noise"
    question = phrasing(rng, heldout, ("Is this a steady tone or noise?", "Do you hear a tone or noise?"),
                         ("Is the sound in this clip noise, or a steady tone with one pitch?",))
    heard = (f"its energy sits at one frequency near {freq:.0f} Hz" if is_tone else
             "its energy is spread over a wide band of frequencies with no single pitch")
    reasoning = f"I hear one sound of {seconds:.1f} s; {heard}, so it is {answer}."
    return PerceptionItem("noise", (wav,), question, answer, shuffled(rng, ("a steady tone", "noise")), reasoning,
                          f"It is {answer}.", {"tone": is_tone, "freq": freq if is_tone else None})


def _clip(rng: np.random.Generator, freq: float, wave: str) -> np.ndarray:
    return with_noise(np.concatenate([silence(rng.uniform(0.1, 0.3)), tone(freq, float(rng.uniform(0.4, 0.8)), -6,
                                                                             wave), silence(0.2)]), rng)


def clip_higher_item(rng: np.random.Generator, heldout: bool = False) -> PerceptionItem:
    """Two audio inputs in one question: which clip's tone is higher (both tones inside the task's range)."""
    (lo, hi), wave = _params(rng, heldout)
    ratio = 2 ** float(rng.uniform(0.2, 0.6))
    low = float(rng.uniform(lo, hi / ratio))
    first_higher = bool(rng.random() < 0.5)
    f1, f2 = (low * ratio, low) if first_higher else (low, low * ratio)
    answer = "the first clip" if first_higher else "the second clip"
    question = phrasing(rng, heldout, ("Which clip has the higher tone, the first clip or the second?",
                                        "In which of the two clips is the pitch higher?"),
                         ("Comparing the two recordings, which clip's tone is higher: the first clip or the second?",))
    reasoning = (f"The first clip holds a tone of about {f1:.0f} Hz and the second clip one of about {f2:.0f} Hz, "
                 f"so {answer} has the higher tone.")
    return PerceptionItem("clip_higher", (_clip(rng, f1, wave), _clip(rng, f2, wave)), question, answer,
                          shuffled(rng, ("the first clip", "the second clip")), reasoning,
                          f"{answer.capitalize()} has the higher tone.", {"freqs": (f1, f2), "wave": wave})


MAKERS: dict[str, Callable[..., PerceptionItem]] = {
    "interval": interval_item, "tempo": tempo_item, "rhythm": rhythm_item, "noise": noise_item,
    "clip_higher": clip_higher_item,
}
CHANCE = {"interval": 1 / 3, "tempo": 0.5, "rhythm": 0.5, "noise": 0.5, "clip_higher": 0.5}
