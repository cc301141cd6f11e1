"""The MGRD perception tasks beyond `train.sounds`: every answer measured back from the audio itself."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import soundfile as sf

from audio_measure import HOP, frame_rms, peak_hz, segments, spans, spectral_flatness, voiced_f0
from mgrd_fixtures import tiny_assembly, tiny_config_for
from stepaudio.evaluation.prompts import build_messages
from stepaudio.inputs import prepare_chat
from stepaudio.text.tiny_tokenizer import build_tiny_tokenizer
from stepaudio.text.tokenizer import StepTokenizer
from stepaudio.train import sounds
from stepaudio.train.mgrd import grounding, perception, spoken_style
from stepaudio.train.mgrd.config import DataConfig, load_config
from stepaudio.train.mgrd.pipeline import run_mgrd
from stepaudio.train.mgrd.tasks import MAKERS, TASKS, sound_items, write_eval_items
from stepaudio.train.questions import HELDOUT_REPEAT_SENTENCES, REPEAT_SENTENCES
from stepaudio.train.sounds import SAMPLE_RATE
from stepaudio.train.speech import espeak, family_available

SOUND_TASKS = tuple(perception.MAKERS)
SPOKEN_TASKS = tuple(spoken_style.MAKERS)
NO_ESPEAK = family_available("espeak")
needs_espeak = pytest.mark.skipif(NO_ESPEAK is not None, reason=str(NO_ESPEAK))


def _made(task: str, n: int, heldout: bool, seed: int) -> list[perception.PerceptionItem]:
    """Items straight from their generator (with the facts they were built from)."""
    return [MAKERS[task](np.random.default_rng([seed, i]), heldout) for i in range(n)]


def _onsets(wav: np.ndarray) -> np.ndarray:
    return np.array([a for a, _ in spans(wav)]) / SAMPLE_RATE


def _nearest_interval(ratio: float) -> str:
    semitones = 12 * np.log2(ratio)
    return min(perception.INTERVALS, key=lambda name: abs(perception.INTERVALS[name] - semitones))


def _measured_sound_answer(task: str, clips: tuple[np.ndarray, ...]) -> str:
    if task == "clip_higher":
        (a,), (b,) = (segments(c) for c in clips)
        return "the first clip" if peak_hz(a) > peak_hz(b) else "the second clip"
    (wav,) = clips
    if task == "interval":
        first, second = segments(wav)
        return _nearest_interval(peak_hz(second) / peak_hz(first))
    if task == "tempo":  # two trains: split at the longest silence, compare the median gap of each
        onsets = _onsets(wav)
        cut = int(np.argmax(np.diff(onsets))) + 1
        gaps = [np.median(np.diff(onsets[:cut])), np.median(np.diff(onsets[cut:]))]
        return "the first" if gaps[0] < gaps[1] else "the second"
    if task == "rhythm":
        gaps = np.diff(_onsets(wav))
        return "uneven" if gaps.max() / gaps.min() > 1.4 else "evenly spaced"
    (sound,) = segments(wav)
    return "noise" if spectral_flatness(sound) > 0.1 else "a steady tone"


def _syllables(sentence: str) -> int:
    return len(re.findall(r"[aeiouy]+", sentence.lower()))


def _speech_seconds(wav: np.ndarray) -> float:
    """From the first to the last 10 ms frame above 5 % of the loudest one."""
    on = np.flatnonzero(frame_rms(wav) > 0.05 * frame_rms(wav).max())
    return (on[-1] - on[0] + 1) * HOP / SAMPLE_RATE


def _words(wav: np.ndarray) -> list[tuple[float, float]]:
    """(seconds, RMS) of each word: stretches above 5 % of the loudest frame, gaps under 150 ms bridged
    (the generator pauses 250 ms between words)."""
    threshold = 0.05 * frame_rms(wav).max()
    return [((b - a) / SAMPLE_RATE, float(np.sqrt(np.mean(wav[a:b] ** 2))))
            for a, b in spans(wav, threshold, min_frames=4, bridge_frames=15)]


def _stress_ratios(p: perception.PerceptionItem) -> tuple[np.ndarray, np.ndarray]:
    """Per word: (duration, RMS) in the item over the same in the unstressed rendering by the same voice."""
    facts = p.facts
    voice = facts["voice"]
    plain = espeak(spoken_style.emphasis_ssml(facts["words"], None), voice.name, voice.speed, voice.pitch, ssml=True)
    said, base = _words(p.clips[0]), _words(plain)
    assert len(said) == len(base) == len(facts["words"]), (voice, facts["words"], len(said), len(base))
    return np.array([d for d, _ in said]) / [d for d, _ in base], np.array([r for _, r in said]) / [r for _, r in base]


@pytest.mark.parametrize("heldout", [False, True])
def test_every_sound_answer_is_what_the_audio_measures(heldout):
    for task in SOUND_TASKS:
        for i, p in enumerate(_made(task, 10, heldout, 5)):
            assert _measured_sound_answer(task, p.clips) == p.answer, (task, i)
            if p.answer == "noise":
                continue
            # every tone is inside its split's range: training 250-1200 Hz, held-out 1300-2200 Hz (interval: its
            # first tone; the octave above reaches 4400 Hz)
            peaks = [peak_hz(s) for c in p.clips for s in segments(c)]
            assert (1295 < min(peaks) < 2205) if heldout else (245 < max(peaks) < 1205), (task, i, peaks)
            # the frequencies the reasoning states are the ones measured (the quantity check's ground truth)
            stated = grounding.quantities(p.reasoning)["hz"]
            assert stated and all(any(abs(s - m) <= 0.01 * m for m in peaks) for s in stated), (stated, peaks)


@pytest.mark.parametrize("heldout", [False, True])
def test_stated_beat_times_are_the_measured_onsets(heldout):
    for task in ("tempo", "rhythm"):
        for p in _made(task, 8, heldout, 6):
            onsets = _onsets(p.clips[0])
            gaps = np.diff(onsets)
            stated = grounding.quantities(p.reasoning)["s"]
            if task == "rhythm":  # every onset, then every gap
                assert np.allclose(stated, np.concatenate([onsets, gaps]), atol=0.015), (stated, onsets)
            else:  # the gap of each train
                assert len(stated) == 2 and all(np.any(abs(gaps - s) < 0.015) for s in stated), (stated, gaps)


def test_noise_and_tone_are_far_apart_in_flatness():
    flat = {"noise": [], "a steady tone": []}
    for heldout in (False, True):
        for p in _made("noise", 12, heldout, 7):
            flat[p.answer].append(spectral_flatness(segments(p.clips[0])[0]))
    # measured: tones at most 0.03 (square waves, faint noise floor), pink noise about 0.37, white noise 0.99
    assert max(flat["a steady tone"]) < 0.05 and min(flat["noise"]) > 0.2, flat


@needs_espeak
@pytest.mark.parametrize("heldout", [False, True])
def test_speaking_rate_and_voice_pitch_are_what_the_audio_measures(heldout):
    for task in ("rate", "voice_pitch"):
        for p in _made(task, 8, heldout, 8):
            wav, sentence = p.clips[0], p.facts["sentence"]
            assert sentence in (HELDOUT_REPEAT_SENTENCES if heldout else REPEAT_SENTENCES)
            if task == "rate":  # seconds of speech per syllable
                per_syllable = _speech_seconds(wav) / _syllables(sentence)
                assert (per_syllable > 0.175) == (p.answer == "slow"), (per_syllable, p.facts)
                (stated,) = grounding.quantities(p.reasoning)["s"]  # within the quantity check's tolerance
                assert abs(stated - _speech_seconds(wav)) < 0.2 * _speech_seconds(wav), (stated, p.facts)
            else:
                f0 = voiced_f0(wav)
                assert (f0 > 160) == (p.answer == "high") and not 130 < f0 < 180, (f0, p.facts)


@needs_espeak
@pytest.mark.parametrize("heldout", [False, True])
def test_the_stressed_word_is_louder_or_longer_than_unstressed(heldout):
    """Measured over 120 items (both splits): the stressed word's duration x RMS at least 1.47 x the unstressed
    rendering's, every other word's at most 1.11 x; most voices make the word louder (RMS 1.23 x or more), the
    Andy variant longer instead."""
    for p in _made("emphasis", 10, heldout, 9):
        durations, levels = _stress_ratios(p)
        scores, stressed = durations * levels, p.facts["stressed"]
        assert p.facts["words"][stressed].rstrip(".") == p.answer
        assert max(levels[stressed], durations[stressed]) > 1.15, (p.facts, levels, durations)
        assert scores[stressed] > 1.35 and np.delete(scores, stressed).max() < 1.2, (p.facts, scores)


def test_training_and_heldout_ranges_do_not_overlap():
    def apart(a: tuple[float, float], b: tuple[float, float]) -> bool:
        return a[1] <= b[0] or b[1] <= a[0]

    assert apart(perception.INTERVAL_BASE[False], perception.INTERVAL_BASE[True])
    assert perception.INTERVAL_BASE[False][1] * 2 <= sounds._TRAIN_FREQ[1]  # the octave stays in the training range
    for table in (spoken_style.RATE_WPM, spoken_style.PITCH_SETTING):
        for label in {k[1] for k in table}:
            assert apart(table[False, label], table[True, label]), (table, label)
    for train, held in zip(spoken_style._WORDS[False], spoken_style._WORDS[True]):
        assert not set(train) & set(held)
    assert not set(REPEAT_SENTENCES) & set(HELDOUT_REPEAT_SENTENCES)
    for heldout in (False, True):  # the drawn values are inside their split's range
        for task, key, table in (("rate", "wpm", spoken_style.RATE_WPM),
                                 ("voice_pitch", "setting", spoken_style.PITCH_SETTING)):
            for p in _made(task, 4, heldout, 10) if NO_ESPEAK is None else []:
                lo, hi = table[heldout, p.answer]
                assert lo <= p.facts[key] <= hi and p.facts["voice"].name in spoken_style._POOLS[heldout]


@pytest.mark.parametrize("task", SOUND_TASKS + SPOKEN_TASKS)
def test_items_score_their_reply_and_no_other_option(task):
    if task in SPOKEN_TASKS and NO_ESPEAK is not None:
        pytest.skip(NO_ESPEAK)
    for g in sound_items(11, (task,), 4, False, "score") + sound_items(11, (task,), 2, True, "score"):
        assert g.item.style == "mcq" and g.item.answer in g.item.choices
        assert g.correct(g.reply) and g.correct(g.item.answer)
        assert not any(g.correct(other) for other in g.item.choices if other != g.item.answer)
        assert grounding.lexically_grounded(g.reference) and grounding.quantities_agree(g.reference, g.reference)


def test_existing_tasks_keep_their_seeds_and_default_config():
    assert list(MAKERS)[:5] == list(sounds.MAKERS) and TASKS[5:] == SOUND_TASKS + SPOKEN_TASKS
    assert DataConfig().tasks == ("higher", "louder", "direction", "count", "longer")
    for task in sounds.TASKS:  # the item a run of the previous release drew, regenerated the same
        tag = "distill0"
        rng = np.random.default_rng([0, sum(tag.encode()), len(tag), list(sounds.MAKERS).index(task), 1])
        (g,) = sound_items(0, (task,), 2, False, tag)[1:]
        assert np.array_equal(g.clips[0], sounds.MAKERS[task](rng, False).wav), task


def test_a_config_with_the_new_tasks_validates(tmp_path):
    names = ", ".join(f'"{t}"' for t in SOUND_TASKS + SPOKEN_TASKS + ("higher",))
    (tmp_path / "run.toml").write_text(f'out = "r"\n[data]\ntasks = [{names}]\n')
    assert load_config(tmp_path / "run.toml").data.tasks == SOUND_TASKS + SPOKEN_TASKS + ("higher",)
    (tmp_path / "bad.toml").write_text('out = "r"\n[data]\ntasks = ["tempoo"]\n')
    with pytest.raises(ValueError, match="unknown task 'tempoo'; choose from .*clip_higher"):
        load_config(tmp_path / "bad.toml")


def test_two_clip_items_reach_the_prompt_as_two_audio_inputs(tmp_path):
    tokenizer = StepTokenizer(build_tiny_tokenizer())
    (g,) = sound_items(12, ("clip_higher",), 1, True, "two")
    messages, audio = g.messages(inline_audio=False)
    assert [p["type"] for p in messages[0]["content"]] == ["text", "audio", "audio"] and len(audio) == 2
    prepared = prepare_chat(tokenizer, messages, audio, n_mels=80)
    assert prepared.token_ids.count(tokenizer.audio_start_id) == 2 and len(prepared.audio_tokens) == 2
    inline, none = g.messages(inline_audio=True)
    assert none == [] and all(np.array_equal(p["audio"], w) for p, w in zip(inline[0]["content"][1:], g.clips))
    (item,) = write_eval_items([g], tmp_path)
    assert [p.rsplit("/", 1)[1] for p in item.audio] == [f"{g.item.id}-0.wav", f"{g.item.id}-1.wav"]
    for path, wav in zip(item.audio, g.clips):
        assert np.array_equal(sf.read(path, dtype="float32")[0], wav)
    content = build_messages(item)[0]["content"]
    assert content[0]["type"] == "text" and len(content) == 3  # the question, then each clip
    (one,) = write_eval_items(sound_items(12, ("interval",), 1, True, "one"), tmp_path)
    assert one.audio == (str(tmp_path / "audio" / f"{one.id}.wav"),)  # one clip keeps the old file name


def test_a_tiny_run_evaluates_and_distils_a_two_clip_task(tmp_path):
    cfg = tiny_config_for(tmp_path / "run", budgets="0", stages=("data", "evaluate_before", "distill"),
                          data=DataConfig(tasks=("clip_higher", "interval"), items_per_task=1, text_items=1,
                                          heldout_per_task=1))
    summary = run_mgrd(cfg, progress=False, assembly=tiny_assembly())
    out = tmp_path / "run"
    assert len(list((out / "heldout" / "audio").glob("heldout-clip_higher-0000-*.wav"))) == 2
    assert set(summary["tasks"]) == {"clip_higher", "interval"}
    assert {"clip_higher@0", "interval@0"} <= set(summary["stages"]["evaluate_before"])
    chains = json.loads((out / "distill_round0" / "chains.json").read_text())
    assert chains["stats"]["audio_chains"] == 2 * 2 and (out / "merges" / "00-distill_round0.pt").is_file()
