"""`stepaudio eval make-synthetic`: a seeded offline benchmark whose answers are exact by construction.

Tasks and chance levels (`CHANCE`):
- count (short answer, 1–6 beeps; chance 1/6), pitch_order, loudness, duration (which of two tones is higher,
  louder, longer; multiple choice, chance 1/2): the held-out tone parameters of `train.sounds` (triangle
  waves at 1300–2200 Hz), which training never plays;
- tempo (music; chance 1/2): two click rhythms at 60–180 BPM, at least 1.3x apart: which is faster;
- arithmetic (speech, Spoken-MQA style; chance about 0): "What is 23 plus 19?" read by held-out espeak-ng
  voices, sums and differences of 2–99 and products of 2–12; the prompt is the Spoken-MQA instruction.

Each item's randomness is seeded by (seed, task, index), so adding a task or items leaves the others as
they were, and the same arguments write byte-identical files.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm import tqdm

from ..train.sounds import SAMPLE_RATE, count_item, higher_item, longer_item, louder_item, silence, tone, with_noise
from ..train.speech import random_voice, speak

TASKS = ("count", "pitch_order", "loudness", "duration", "tempo", "arithmetic")
CHANCE = {"count": 1 / 6, "pitch_order": 0.5, "loudness": 0.5, "duration": 0.5, "tempo": 0.5, "arithmetic": 0.0}
ORDINALS = ("the first", "the second")
_PAIR_MAKERS = {"pitch_order": higher_item, "loudness": louder_item, "duration": longer_item}


def _click_rhythm(bpm: float, beats: int, rng: np.random.Generator) -> np.ndarray:
    """Short decaying clicks (a 1.5 kHz blip over noise) every 60/bpm seconds."""
    period = int(SAMPLE_RATE * 60 / bpm)
    click = tone(1500.0, 0.03, -6, "sine") + rng.standard_normal(int(0.03 * SAMPLE_RATE)).astype(np.float32) * 0.05
    click *= np.exp(-np.arange(len(click)) / (0.008 * SAMPLE_RATE)).astype(np.float32)
    out = np.zeros(period * beats, np.float32)
    for b in range(beats):
        out[b * period:b * period + len(click)] += click
    return out


def tempo_item(rng: np.random.Generator) -> tuple[np.ndarray, str, str]:
    """(waveform, question, answer): two rhythms of 4–6 beats with a pause between them."""
    slow = float(rng.uniform(60, 180 / 1.3))
    fast = float(rng.uniform(slow * 1.3, 180))
    first_fast = bool(rng.random() < 0.5)
    bpms = (fast, slow) if first_fast else (slow, fast)
    parts = [silence(0.2)]
    for bpm in bpms:
        parts += [_click_rhythm(bpm, int(rng.integers(4, 7)), rng), silence(0.8)]
    return (with_noise(np.concatenate(parts), rng), "Which of the two rhythms is faster, the first or the second?",
            ORDINALS[0] if first_fast else ORDINALS[1])


def arithmetic_transcript(rng: np.random.Generator) -> tuple[str, int]:
    op = str(rng.choice(["plus", "minus", "times"]))
    if op == "times":
        a, b = int(rng.integers(2, 13)), int(rng.integers(2, 13))
        return f"What is {a} times {b}?", a * b
    a, b = int(rng.integers(2, 100)), int(rng.integers(2, 100))
    if op == "minus":
        a, b = max(a, b), min(a, b)
        return f"What is {a} minus {b}?", a - b
    return f"What is {a} plus {b}?", a + b


def _item(task: str, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """A waveform and its manifest fields (without id and audio)."""
    if task == "count":
        sound = count_item(rng, heldout=True, n=int(rng.integers(1, 7)))
        return sound.wav, {"question": sound.question, "choices": [], "answer": sound.answer, "task": "short"}
    if task == "arithmetic":
        transcript, value = arithmetic_transcript(rng)
        return speak(transcript, random_voice(rng, "espeak-heldout")), {
            "question": "", "choices": [], "answer": str(value), "task": "math", "transcript": transcript}
    if task == "tempo":
        wav, question, answer = tempo_item(rng)
    else:
        sound = _PAIR_MAKERS[task](rng, heldout=True)
        wav, question, answer = sound.wav, sound.question, sound.answer
    choices = list(ORDINALS) if rng.random() < 0.5 else list(reversed(ORDINALS))
    return wav, {"question": question, "choices": choices, "answer": answer, "task": "mcq"}


def _check(n_per_task: int, tasks: Sequence[str]) -> None:
    if n_per_task < 1:
        raise ValueError(f"--n-per-task must be at least 1, got {n_per_task}")
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or not tasks:
        raise ValueError(f"unknown task {unknown[0] if unknown else '(none)'!r}; choose from {', '.join(TASKS)}")
    if "arithmetic" in tasks and shutil.which("espeak-ng") is None:
        raise EnvironmentError("the arithmetic task reads its questions with espeak-ng: apt-get install espeak-ng")


def make_synthetic(out: Path, n_per_task: int = 20, seed: int = 0, tasks: Sequence[str] = TASKS,
                   progress: bool = True) -> Path:
    """Writes out/audio/<id>.wav (16 kHz mono PCM16) and out/manifest.jsonl; returns the manifest path."""
    _check(n_per_task, tasks)
    out = Path(out)
    (out / "audio").mkdir(parents=True, exist_ok=True)
    lines = []
    jobs = [(task, i) for task in tasks for i in range(n_per_task)]
    for task, i in tqdm(jobs, desc="make-synthetic", disable=not progress, file=sys.stderr):
        rng = np.random.default_rng([seed, TASKS.index(task), i])
        wav, fields = _item(task, rng)
        item_id = f"{task}-{i:04d}"
        peak = float(np.abs(wav).max()) or 1.0  # peak 0.9: no clipping; levels within a clip keep their ratios
        sf.write(out / "audio" / f"{item_id}.wav", wav * (0.9 / peak), SAMPLE_RATE, subtype="PCM_16")
        lines.append(json.dumps({"id": item_id, "audio": f"audio/{item_id}.wav", **fields, "category": task}))
    manifest = out / "manifest.jsonl"
    tmp = manifest.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(manifest)
    return manifest
