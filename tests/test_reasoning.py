"""The reasoning/answer split at `</think>`: the same result at every chunk boundary, and as one text."""

from __future__ import annotations

import random

import pytest

from model_fixtures import tiny_dir  # noqa: F401  (fixture)
from stepaudio.engine.detokenizer import IncrementalDetokenizer
from stepaudio.text.reasoning import ReasoningParser, partial_marker_length, split_reasoning
from stepaudio.text.tokenizer import StepTokenizer

# (model output, reasoning, content) for a prompt that prefilled `<think>\n`
IN_REASONING = [
    ("One beep.\n</think>\nThe answer is B.", "One beep.\n", "The answer is B."),
    ("<think>\nOne beep.\n</think>\nThe answer is B.", "One beep.\n", "The answer is B."),
    (" \n<think>\nre-opened after whitespace\n</think>\nB", "re-opened after whitespace\n", "B"),
    ("no newlines</think>answer", "no newlines", "answer"),
    ("<think>no newlines</think>answer", "no newlines", "answer"),
    ("这段音频里有一声蜂鸣。\n</think>\n答案是B。", "这段音频里有一声蜂鸣。\n", "答案是B。"),
    ("<think>\n说话的人很开心😀\n</think>\n## 答案\n- 开心", "说话的人很开心😀\n", "## 答案\n- 开心"),
    # only the one newline after the marker is dropped
    ("r\n</think>\n\nanswer\n", "r\n", "\nanswer\n"),
    ("<think>\n\nr</think>\n\n", "\nr", "\n"),
    # the empty think block of a non-CoT sample
    ("<think>\n\n</think>\nanswer", "\n", "answer"),
    ("</think>\nanswer", "", "answer"),
    # text after the first `</think>` is content, markers included
    ("a</think>\nb</think>\nc", "a", "b</think>\nc"),
    # a `<think>` that does not lead is reasoning text
    ("x <think>y</think>z", "x <think>y", "z"),
    # never closed: all reasoning, a partial marker at the end included
    ("still thinking about the audio", "still thinking about the audio", ""),
    ("still thinking </thi", "still thinking </thi", ""),
    ("a </thin b </think", "a </thin b </think", ""),
    ("<thi", "<thi", ""),
    ("\n\nr", "\n\nr", ""),
    ("<think>", "", ""),
    ("r\n</think>", "r\n", ""),
    ("", "", ""),
]

# (model output, reasoning, content) for a prompt that did not prefill `<think>`
IN_CONTENT = [
    ("The answer is B.", "", "The answer is B."),
    ("<think>\nhmm\n</think>\nB", "hmm\n", "B"),
    ("\n <think>r</think>c", "r", "c"),
    ("answer </think>\n more", "", "answer </think>\n more"),
    ("答案是B。", "", "答案是B。"),
    ("<thi", "", "<thi"),
    ("\n", "", "\n"),
    ("", "", ""),
]

CASES = [(text, True, r, c) for text, r, c in IN_REASONING] + [(text, False, r, c) for text, r, c in IN_CONTENT]


def feed_chunks(chunks: list[str], starts_in_reasoning: bool) -> tuple[str, str]:
    """Stream `chunks` through a parser; the joined (reasoning, content)."""
    parser = ReasoningParser(starts_in_reasoning=starts_in_reasoning)
    pieces = [parser.feed(chunk) for chunk in chunks] + [parser.finish()]
    return "".join(r for r, _ in pieces), "".join(c for _, c in pieces)


def random_chunks(text: str, rng: random.Random) -> list[str]:
    cuts = sorted(rng.sample(range(1, len(text)), k=rng.randint(0, len(text) - 1))) if len(text) > 1 else []
    bounds = [0, *cuts, len(text)]
    return [text[a:b] for a, b in zip(bounds, bounds[1:])]


@pytest.mark.parametrize(("text", "starts_in_reasoning", "reasoning", "content"), CASES)
def test_split_whole_text(text, starts_in_reasoning, reasoning, content):
    assert split_reasoning(text, starts_in_reasoning=starts_in_reasoning) == (reasoning, content)


@pytest.mark.parametrize(("text", "starts_in_reasoning", "reasoning", "content"), CASES)
def test_every_two_way_split(text, starts_in_reasoning, reasoning, content):
    for i in range(len(text) + 1):
        assert feed_chunks([text[:i], text[i:]], starts_in_reasoning) == (reasoning, content), i


@pytest.mark.parametrize(("text", "starts_in_reasoning", "reasoning", "content"), CASES)
def test_char_by_char(text, starts_in_reasoning, reasoning, content):
    assert feed_chunks(list(text), starts_in_reasoning) == (reasoning, content)


@pytest.mark.parametrize(("text", "starts_in_reasoning", "reasoning", "content"), CASES)
def test_random_multi_way_splits(text, starts_in_reasoning, reasoning, content):
    rng = random.Random(text)
    for _ in range(30):
        chunks = random_chunks(text, rng)
        assert feed_chunks(chunks, starts_in_reasoning) == (reasoning, content), chunks


def test_partial_marker_is_held_until_the_next_delta():
    parser = ReasoningParser()
    assert parser.feed("thinking </thi") == ("thinking ", "")
    assert parser.feed("nk>") == ("", "")
    assert parser.feed("\nB") == ("", "B")


def test_newline_after_marker_dropped_when_it_comes_in_the_next_delta():
    parser = ReasoningParser()
    assert parser.feed("r</think>") == ("r", "")
    assert parser.feed("") == ("", "")
    assert parser.feed("\n") == ("", "")
    assert parser.feed("\nB") == ("", "\nB")


def test_reasoning_streams_without_waiting_for_the_marker():
    parser = ReasoningParser()
    assert parser.feed("<think>\nThe audio") == ("The audio", "")
    assert parser.feed(" has a beep") == (" has a beep", "")


def test_partial_marker_length():
    assert partial_marker_length("abc </thi", ["</think>"]) == 5
    assert partial_marker_length("abc <", ["</think>"]) == 1
    assert partial_marker_length("abc </think>", ["</think>"]) == 0
    assert partial_marker_length("brown f", ["fox", "own fox"]) == 5
    assert partial_marker_length("abc", []) == 0


@pytest.fixture(scope="module")
def tok(tiny_dir) -> StepTokenizer:
    return StepTokenizer.from_dir(tiny_dir)


@pytest.mark.parametrize("text", [IN_REASONING[1][0], IN_REASONING[6][0], IN_REASONING[11][0]])
def test_token_stream_through_detokenizer_and_parser(tok, text):
    """The engine's path: tokens -> text deltas -> (reasoning, content) deltas, one token at a time."""
    ids = tok.encode(text)
    detok = IncrementalDetokenizer(tok)
    deltas = [detok.add([i]) for i in ids] + [detok.flush()]
    assert feed_chunks(deltas, starts_in_reasoning=True) == split_reasoning(tok.decode(ids))
