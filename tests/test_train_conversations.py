"""Multi-turn training and evaluation items: follow-ups whose answers need the earlier turns."""

from __future__ import annotations

import re

import numpy as np

from stepaudio.text.tiny_tokenizer import build_tiny_tokenizer
from stepaudio.text.tokenizer import StepTokenizer
from stepaudio.train.align import build_batch
from stepaudio.train.conversations import (CAPITAL_OF, FOLLOW_UP_KINDS, Turn, conversation_messages,
                                           random_conversation, sum_chain)
from stepaudio.train.evaluate import heldout_conversations
from stepaudio.train.examples import ExampleSampler, training_questions
from stepaudio.train.questions import CAPITALS, Question, _split, answer_is_correct
from stepaudio.train.targets import Target


def _items():
    questions = training_questions()
    targets = {q.text: Target(q.text, f'The user asks: "{q.text}" Because it is so.', f"It is {q.accept[0]}.")
               for q in questions if q.kind in ("capital", "fact")}
    return [(q, targets[q.text]) for q in questions if q.text in targets]


def test_sum_chains_compute_every_total():
    rng = np.random.default_rng(0)
    for steps in (1, 2):
        for _ in range(20):
            conv = sum_chain(rng, steps=steps)
            numbers = [int(n) for t in conv.turns for n in re.findall(r"\d+", t.text)]
            assert len(conv.turns) == steps + 1 and len(conv.answers) == steps
            assert str(sum(numbers)) == conv.accept[0]
            assert conv.target.answer.endswith(f"is {sum(numbers)}.")
            assert conv.answers[0].endswith(f"is {numbers[0] + numbers[1]}.")


def test_follow_ups_depend_on_the_earlier_turn():
    rng = np.random.default_rng(1)
    items = _items()
    for _ in range(30):
        conv = random_conversation(rng, items, kind="capital")
        asked = next(c for c in CAPITAL_OF if c in conv.turns[0].text)
        if conv.kind == "capital":
            follow = next(c for c in CAPITAL_OF if c in conv.turns[-1].text)
            assert follow != asked and answer_is_correct(conv.target.answer,
                                                         _q(conv.target.answer, (CAPITAL_OF[follow].lower(),)))
            assert asked in conv.target.reasoning
        else:  # a third turn asked for the answer again
            assert len(conv.turns) == 3 and conv.target.answer == conv.answers[-1]
    again = random_conversation(rng, items, kind="again")
    assert again.target.answer == again.answers[0]
    why = random_conversation(rng, items, kind="why")
    assert why.target.answer == "Because it is so."


def _q(text, accept):
    return Question("capital", text, accept)


def test_heldout_conversations_use_heldout_countries_and_phrasings():
    train_countries = {c for c, _ in _split(CAPITALS, False)}
    convs = heldout_conversations(seed=1, per_kind=6)
    assert {c.kind for c in convs} == {"capital", "again", "sum", "new"}
    train_phrases = {"And of", "What about", "Say it again", "Now add", "Add "}
    for conv in convs:
        last = conv.turns[-1].text
        assert not any(last.startswith(p) for p in train_phrases), last
        assert conv.accept, conv
        if conv.kind == "capital":
            assert not any(c in last for c in train_countries)
    assert set(FOLLOW_UP_KINDS) >= {c.kind for c in convs}


def test_conversation_messages_keep_turn_order_and_audio_order():
    rng = np.random.default_rng(2)
    beeps = np.zeros(1600, np.float32)
    new_turn = (Turn("How many beeps?", beeps), Target("How many beeps?", "r", "There are 3 beeps."), ("3",))
    conv = random_conversation(rng, _items(), new_turn=new_turn, kind="new")
    messages, parts = conversation_messages(conv, [True, False])
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    assert messages[1]["content"] == conv.answers[0]
    assert parts[0] == conv.turns[0].text and parts[1] is beeps  # spoken question, then the sound clip
    assert messages[2]["content"][0]["text"] == "How many beeps?"


def test_multiturn_examples_batch_with_every_audio_part():
    tokenizer = StepTokenizer(build_tiny_tokenizer())
    questions = training_questions()
    targets = {q.text: Target(q.text, "r", f"It is {q.accept[0] if q.accept else 'so'}.")
               for q in questions if q.kind != "repeat"}
    sampler = ExampleSampler(questions, targets)
    rng = np.random.default_rng(3)
    examples = [sampler.multiturn_example(rng) for _ in range(6)]
    assert all(e.kind == "multiturn" and sum(m["role"] == "assistant" for m in e.messages) >= 1 for e in examples)
    batch = build_batch(tokenizer, examples, n_mels=80)
    assert len(batch.mels) == sum(len(e.audio) for e in examples) > 0
    assert int(batch.audio_rows.sum()) > 0
