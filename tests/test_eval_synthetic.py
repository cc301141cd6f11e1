"""`stepaudio eval make-synthetic`: deterministic files whose answers are measurable in the audio itself."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from stepaudio.cli import main
from stepaudio.evaluation.manifest import read_manifest
from stepaudio.evaluation.synthetic import CHANCE, TASKS, make_synthetic

N = 3


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic(tmp_path_factory.mktemp("syn"), N, seed=5, progress=False)


def _bursts(wav: np.ndarray, threshold: float = 0.1) -> list[tuple[int, int]]:
    """(start, end) samples where the 5 ms RMS envelope is above threshold x its peak."""
    hop = 80
    frames = wav[: len(wav) // hop * hop].reshape(-1, hop)
    env = np.sqrt((frames ** 2).mean(1))
    loud = env > threshold * env.max()
    edges = np.flatnonzero(np.diff(np.concatenate([[0], loud.astype(int), [0]])))
    return [(s * hop, e * hop) for s, e in zip(edges[::2], edges[1::2])]


def _peak_hz(segment: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(segment * np.hanning(len(segment))))
    return float(np.fft.rfftfreq(len(segment), 1 / 16000)[spectrum.argmax()])


def _first_wins(answer: str) -> bool:
    return answer == "the first"


def _records(bench: Path) -> list[dict]:
    return [json.loads(line) for line in bench.read_text().splitlines()]


def test_manifest_schema_and_files(bench):
    records = _records(bench)
    assert [r["category"] for r in records] == [t for t in TASKS for _ in range(N)]
    for r in records:
        wav, sr = sf.read(bench.parent / r["audio"])
        assert sr == 16000 and wav.ndim == 1 and 0.3 < np.abs(wav).max() < 1.0
        assert r["task"] in ("short", "mcq", "math") and set(r) >= {"id", "question", "choices", "answer"}
        if r["task"] == "mcq":
            assert r["answer"] in r["choices"] and sorted(r["choices"]) == ["the first", "the second"]
    assert [i.id for i in read_manifest(bench)] == [r["id"] for r in records]
    assert set(CHANCE) == set(TASKS)


def test_answers_are_in_the_audio(bench):
    for r in _records(bench):
        wav = sf.read(bench.parent / r["audio"], dtype="float32")[0]
        task, answer = r["category"], r["answer"]
        if task == "count":
            assert len(_bursts(wav)) == int(answer)
        elif task in ("pitch_order", "loudness", "duration"):
            # the two tones: the two longest bursts (a faint noise floor can poke above the threshold briefly)
            (s1, e1), (s2, e2) = sorted(sorted(_bursts(wav, threshold=0.05), key=lambda b: b[0] - b[1])[:2])
            first, second = wav[s1:e1], wav[s2:e2]
            measure = {"pitch_order": _peak_hz, "duration": len,
                       "loudness": lambda x: float(np.sqrt((x ** 2).mean()))}[task]
            assert (measure(first) > measure(second)) == _first_wins(answer), r
        elif task == "tempo":
            onsets = np.array([s for s, _ in _bursts(wav, threshold=0.3)])
            gaps = np.diff(onsets)
            pause = int(gaps.argmax())  # the silence between the two rhythms
            first, second = np.median(gaps[:pause]), np.median(gaps[pause + 1:])
            assert (first < second) == _first_wins(answer), r
        else:
            a, op, b = re.fullmatch(r"What is (\d+) (plus|minus|times) (\d+)\?", r["transcript"]).groups()
            value = {"plus": int(a) + int(b), "minus": int(a) - int(b), "times": int(a) * int(b)}[op]
            assert answer == str(value) and r["question"] == "" and r["task"] == "math"
            assert len(wav) > 16000 * 0.8  # really spoken


def test_same_seed_same_bytes(bench, tmp_path):
    again = make_synthetic(tmp_path, N, seed=5, progress=False)
    assert again.read_bytes() == bench.read_bytes()
    for r in _records(bench):
        assert (tmp_path / r["audio"]).read_bytes() == (bench.parent / r["audio"]).read_bytes()
    other = make_synthetic(tmp_path / "other", N, seed=6, tasks=["count"], progress=False)
    assert other.read_text() != bench.read_text()


def test_bad_arguments(tmp_path, capsys):
    with pytest.raises(ValueError, match="unknown task 'chords'"):
        make_synthetic(tmp_path, 2, tasks=["count", "chords"], progress=False)
    with pytest.raises(ValueError, match="at least 1"):
        make_synthetic(tmp_path, 0, progress=False)
    assert main(["eval", "make-synthetic", "--out", str(tmp_path), "--tasks", "nope"]) == 1
    assert "unknown task" in capsys.readouterr().err
    assert main(["eval", "make-synthetic", "--out", str(tmp_path / "ok"), "--tasks", "count,tempo",
                 "--n-per-task", "1"]) == 0
    assert "stepaudio eval" in capsys.readouterr().out and len(read_manifest(tmp_path / "ok" / "manifest.jsonl")) == 2
