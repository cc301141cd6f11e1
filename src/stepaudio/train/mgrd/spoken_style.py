"""Spoken questions about how a sentence was said: its speaking rate, the voice's pitch, the stressed word.

espeak-ng speaks every clip in the training or held-out voice pools of `train.speech` (whose `Voice` refuses
the voices reserved for independent evaluation); its rate and pitch settings and SSML emphasis are the ground
truth. Held-out items use the held-out espeak-ng accents and variants, other rate and pitch settings, the
held-out sentences and words, and their own phrasings. Measured on espeak-ng 1.51: the `en-gb` base ignores
its +variant (every en-gb voice has the same low pitch), so the pitch task leaves it out.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ..questions import HELDOUT_REPEAT_SENTENCES, REPEAT_SENTENCES
from ..sounds import SAMPLE_RATE, silence, with_noise
from ..speech import HELDOUT_ESPEAK_VOICES, TRAIN_ESPEAK_VOICES, Voice, espeak, speak
from .perception import PerceptionItem, phrasing, shuffled

# Words per minute (espeak-ng's -s): slow and fast, training and held-out ranges disjoint.
RATE_WPM = {(False, "slow"): (100.0, 125.0), (False, "fast"): (230.0, 280.0),
            (True, "slow"): (80.0, 100.0), (True, "fast"): (280.0, 320.0)}
# espeak-ng's pitch setting (0-99): low on male variants, high on female ones (median f0 below 110 Hz and
# above 200 Hz, measured).
PITCH_SETTING = {(False, "low"): (10.0, 25.0), (False, "high"): (70.0, 90.0),
                 (True, "low"): (0.0, 10.0), (True, "high"): (90.0, 99.0)}
_LOW_VARIANTS = ("m1", "m2", "m3", "m4", "m7", "Michael", "Steph", "David")
_HIGH_VARIANTS = ("f1", "f2", "f3", "f4", "Annie")
_POOLS = {False: TRAIN_ESPEAK_VOICES, True: HELDOUT_ESPEAK_VOICES}
# Emphasis sentences: the stressed word is the name, the adjective or the noun.
_FRAME = {False: "{name} bought the {adj} {noun}.", True: "{name} found a {adj} {noun}."}
_WORDS = {False: (("Anna", "Peter", "Maria", "John", "Lucy", "David"), ("red", "blue", "green", "small", "old", "new"),
                  ("bag", "car", "book", "house", "dog", "cup")),
          True: (("Sarah", "Tom", "Emma"), ("warm", "big", "cold"), ("coat", "lamp", "chair"))}
WORD_PAUSE_MS = 250   # between words, so each word is a separate stretch of sound


def _voices(heldout: bool, variants: tuple[str, ...] | None = None, skip_bases: tuple[str, ...] = ()) -> list[str]:
    """The espeak-ng voices ("base+variant") of the training or held-out pool, of `variants` if given."""
    split = [v.split("+") for v in _POOLS[heldout]]
    return [f"{b}+{v}" for b, v in split if (variants is None or v in variants) and b not in skip_bases]


def _trimmed(speech: np.ndarray) -> np.ndarray:
    """Without the synthesiser's silence before and after the words (up to 0.5 s at slow rates)."""
    loud = np.flatnonzero(np.abs(speech) > 0.01)
    return speech[loud[0]:loud[-1] + 1]


def _spoken(rng: np.random.Generator, speech: np.ndarray) -> np.ndarray:
    return with_noise(np.concatenate([silence(rng.uniform(0.1, 0.3)), speech, silence(0.2)]), rng)


def rate_item(rng: np.random.Generator, heldout: bool = False) -> PerceptionItem:
    answer = str(rng.choice(["fast", "slow"]))
    wpm = float(rng.uniform(*RATE_WPM[heldout, answer]))
    voice = Voice("espeak", str(rng.choice(_voices(heldout))), wpm / 165, float(rng.uniform(0.8, 1.2)))
    sentence = str(rng.choice(HELDOUT_REPEAT_SENTENCES if heldout else REPEAT_SENTENCES))
    speech = _trimmed(speak(sentence, voice))
    seconds, words = len(speech) / SAMPLE_RATE, len(sentence.split())
    question = phrasing(rng, heldout, ("Is the speaker talking fast or slow?",
                                       "Is this sentence spoken quickly or slowly?"),
                        ("How would you describe the speaking rate: fast or slow?",))
    reasoning = (f"I hear a sentence of {words} words that lasts {seconds:.1f} s, {words / seconds:.1f} words a "
                 f"second, so the speech is {answer}.")
    return PerceptionItem("rate", (_spoken(rng, speech),), question, answer, shuffled(rng, ("fast", "slow")),
                          reasoning, f"The speech is {answer}.",
                          {"voice": voice, "wpm": wpm, "sentence": sentence})


def voice_pitch_item(rng: np.random.Generator, heldout: bool = False) -> PerceptionItem:
    answer = str(rng.choice(["high", "low"]))
    name = str(rng.choice(_voices(heldout, _HIGH_VARIANTS if answer == "high" else _LOW_VARIANTS,
                                 skip_bases=("en-gb",))))
    setting = float(rng.uniform(*PITCH_SETTING[heldout, answer]))
    voice = Voice("espeak", name, float(rng.uniform(0.85, 1.15)), setting / 50)
    sentence = str(rng.choice(HELDOUT_REPEAT_SENTENCES if heldout else REPEAT_SENTENCES))
    question = phrasing(rng, heldout, ("Is the speaker's voice high or low?",
                                       "Does the speaker have a high or a low voice?"),
                        ("Would you call this voice high-pitched or low-pitched: high or low?",))
    heard = "a bright, high voice: its pitch stays high" if answer == "high" else "a deep voice: its pitch stays low"
    reasoning = f"I hear {heard} through the whole sentence, so the voice is {answer}."
    return PerceptionItem("voice_pitch", (_spoken(rng, speak(sentence, voice)),), question, answer,
                          shuffled(rng, ("high", "low")), reasoning, f"The voice is {answer}.",
                          {"voice": voice, "setting": setting, "sentence": sentence})


def emphasis_ssml(words: list[str], stressed: int | None) -> str:
    """SSML for `words` with a pause between them and strong emphasis on word `stressed` (None: none).
    espeak-ng's default level was too weak on some voices (8 of 80 items: the word under 10 % louder x longer)."""
    pause = f' <break time="{WORD_PAUSE_MS}ms"/> '
    return "<speak>" + pause.join(f'<emphasis level="strong">{w}</emphasis>' if i == stressed else w
                                  for i, w in enumerate(words)) + "</speak>"


def emphasis_item(rng: np.random.Generator, heldout: bool = False) -> PerceptionItem:
    name, adj, noun = (str(rng.choice(options)) for options in _WORDS[heldout])
    words = _FRAME[heldout].format(name=name, adj=adj, noun=noun).split()
    stressed = int(rng.choice([0, len(words) - 2, len(words) - 1]))
    voice = Voice("espeak", str(rng.choice(_voices(heldout))), float(rng.uniform(0.85, 1.15)),
                  float(rng.uniform(0.8, 1.2)))
    speech = espeak(emphasis_ssml(words, stressed), voice.name, voice.speed, voice.pitch, ssml=True)
    answer = words[stressed].rstrip(".")
    question = phrasing(rng, heldout, ("Which word does the speaker stress?",
                                       "Which word is emphasised in this sentence?"),
                        ("Listen to the sentence: which word carries the emphasis?",))
    reasoning = (f"I hear the word {answer} stand out with more force than in plain speech, louder or drawn out "
                 f"longer, so the speaker stresses {answer}.")
    return PerceptionItem("emphasis", (_spoken(rng, np.clip(speech, -1, 1)),), question, answer,
                          shuffled(rng, (name, adj, noun)), reasoning, f"The speaker stresses {answer}.",
                          {"voice": voice, "words": words, "stressed": stressed})


MAKERS: dict[str, Callable[..., PerceptionItem]] = {"rate": rate_item, "voice_pitch": voice_pitch_item,
                                                    "emphasis": emphasis_item}
CHANCE = {"rate": 0.5, "voice_pitch": 0.5, "emphasis": 1 / 3}
