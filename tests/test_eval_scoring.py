"""The eval scorers on tricky answer strings: letters, option text, extra words, several options named."""

from __future__ import annotations

import pytest

from stepaudio.evaluation.items import EvalItem
from stepaudio.evaluation.scoring import (final_number, math_correct, mcq_correct, rule_correct, short_correct,
                                          split_reasoning, string_match)

VOCAL = ("Soft and melodic", "Aggressive and talking", "High-pitched and singing", "Whispering")


def _mcq(answer: str, choices: tuple[str, ...] = VOCAL) -> EvalItem:
    return EvalItem("q", ("a.wav",), "Which best describes the vocal?", answer, choices, style="mcq")


@pytest.mark.parametrize(("reply", "ok"), [
    ("B", True), ("B.", True), ("(B)", True), ("b", True), ("Answer: B", True), ("The answer is B.", True),
    ("B. Aggressive and talking", True), ("Aggressive and talking", True),
    ("The vocal is aggressive and talking.", True), ("aggressive AND talking!", True),
    ("A", False), ("C", False), ("E", False), ("", False), ("   ", False),
    ("A soft and melodic voice", False),          # an article, not the letter A, and a wrong option
    ("Aggressive and talking, not whispering", False),  # names a wrong option too
    ("Soft and melodic or aggressive and talking", False),
    ("Aggressive", False),                        # only part of the right option's words
])
def test_multiple_choice_scorer(reply, ok):
    assert mcq_correct(reply, _mcq("Aggressive and talking")) is ok


@pytest.mark.parametrize(("reply", "ok"), [
    ("Yes", True), ("Yes.", True), ("A", True), ("A. Yes", True), ("yes, she is sincere", True),
    ("No", False), ("B", False), ("Yes or no", False), ("I think so", False),
])
def test_yes_no_options(reply, ok):
    assert mcq_correct(reply, _mcq("Yes", ("Yes", "No"))) is ok


def test_string_match_is_the_mmau_rule():
    # gold words all present, no word that only a wrong option has
    assert string_match("dog barking", "a dog is barking loudly", ["dog barking", "cat meowing"])
    assert not string_match("dog barking", "a dog barking at a cat", ["dog barking", "cat meowing"])
    assert not string_match("dog barking", "", ["dog barking", "cat meowing"])
    # words shared by the right and a wrong option do not count against the answer
    assert string_match("a man speaking", "a man speaking", ["a man speaking", "a woman speaking"])


@pytest.mark.parametrize(("reply", "gold", "ok"), [
    ("There are 3 beeps.", "3", True), ("three", "3", True), ("13", "3", False), ("I hear 4 beeps", "3", False),
    ("3 or 4", "3", True), ("4, or maybe 3", "3", False), ("3.0", "3", True), ("The answer: valid.", "valid", True), ("invalid", "valid", False),
    ("valid or invalid", "valid", False), ("Yes.", "yes", True), ("yes and no", "yes", False),
    ("The second tone", "the second", True), ("", "3", False),
])
def test_short_answer_scorer(reply, gold, ok):
    assert short_correct(reply, gold) is ok


@pytest.mark.parametrize(("reply", "ok"), [
    ("The answer is 42.", True), ("\\boxed{42}", True), ("40 + 2 = 42", True), ("42.0", True),
    ("1,042", False), ("41", False), ("\\boxed{42} ... wait, 41", True), ("no idea", False),
])
def test_math_scorer_uses_the_final_number(reply, ok):
    assert math_correct(reply, "42") is ok


def test_fractions_and_number_words():
    assert final_number("It is 3/4 of the cake") == 0.75
    assert final_number("twelve") == 12 and final_number("seven apples and 2 pears") == 2


def test_only_the_text_after_think_is_scored():
    reasoning, answer = split_reasoning("<think>\nA? B? Whispering is wrong.\n</think>\n\nB")
    assert reasoning == "A? B? Whispering is wrong." and answer == "B"
    assert split_reasoning("still thinking about A and B") == ("still thinking about A and B", None)
    assert rule_correct("B", _mcq("Aggressive and talking")) is True
    assert rule_correct("anything", EvalItem("o", ("a.wav",), "Describe it.", "a dog", style="open")) is None


def test_items_check_their_answer():
    with pytest.raises(ValueError, match="not one of its choices"):
        _mcq("Shouting")
    with pytest.raises(ValueError, match="task must be one of"):
        EvalItem("x", ("a.wav",), "q", "a", style="essay")
