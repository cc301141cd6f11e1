"""Incremental detokenization: same text as one decode, whole characters only, stop strings cut exactly.

The tiny tokenizer is byte-level BPE, so Chinese and emoji span several tokens and some tokens end
or start in the middle of a character.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest

from model_fixtures import tiny_dir  # noqa: F401  (fixture)
from stepaudio.engine.detokenizer import IncrementalDetokenizer
from stepaudio.text.tokenizer import StepTokenizer

ENGLISH = "The quick brown fox jumps over the lazy dog. What is the capital of France? Paris."
CHINESE = "这是一个声音。音乐很慢，说话的人很开心。"
EMOJI = "The speaker sounds happy 😀🎵, 音乐 is slow 🐢."
WITH_SPECIALS = "<think>\nThe answer</think>\nB<|EOT|> x<audio_start><audio_patch><audio_end>你好<|im_end|>"


@pytest.fixture(scope="module")
def tok(tiny_dir) -> StepTokenizer:
    return StepTokenizer.from_dir(tiny_dir)


def groupings(n: int) -> Iterator[list[int]]:
    """Every way to cut n tokens into consecutive non-empty groups, as group sizes."""
    for cuts in itertools.product([False, True], repeat=n - 1):
        sizes, size = [], 1
        for cut in cuts:
            if cut:
                sizes.append(size)
                size = 0
            size += 1
        yield sizes + [size]


def two_way(n: int) -> Iterator[list[int]]:
    """Every cut of n tokens into two groups, and the whole output at once."""
    yield [n]
    for i in range(1, n):
        yield [i, n - i]


def stream(detok: IncrementalDetokenizer, ids: list[int], sizes: list[int]) -> list[str]:
    """Feed `ids` in groups of `sizes`, then flush; the deltas, checking `text` after each step."""
    deltas, start = [], 0
    for size in sizes:
        deltas.append(detok.add(ids[start:start + size]))
        start += size
        assert detok.text == "".join(deltas)
    deltas.append(detok.flush())
    assert detok.text == "".join(deltas)
    return deltas


@pytest.mark.parametrize("text", [ENGLISH, CHINESE, EMOJI, WITH_SPECIALS])
@pytest.mark.parametrize("skip_special_tokens", [True, False])
def test_token_by_token_equals_one_decode(tok, text, skip_special_tokens):
    ids = tok.encode(text)
    detok = IncrementalDetokenizer(tok, skip_special_tokens=skip_special_tokens)
    deltas = stream(detok, ids, [1] * len(ids))
    assert "".join(deltas) == tok.decode(ids, skip_special_tokens=skip_special_tokens)
    assert detok.stop_reason is None


def test_special_tokens_kept_or_skipped(tok):
    ids = tok.encode(WITH_SPECIALS)
    kept = "".join(stream(IncrementalDetokenizer(tok, skip_special_tokens=False), ids, [1] * len(ids)))
    skipped = "".join(stream(IncrementalDetokenizer(tok, skip_special_tokens=True), ids, [1] * len(ids)))
    assert kept == WITH_SPECIALS
    assert skipped == "<think>\nThe answer</think>\nB x你好"


@pytest.mark.parametrize("text", [CHINESE, EMOJI])
def test_multibyte_characters_are_never_split(tok, text):
    ids = tok.encode(text)
    assert any("\ufffd" in tok.decode([i]) for i in ids), "the test needs tokens that split a character"
    for sizes in two_way(len(ids)):
        deltas = stream(IncrementalDetokenizer(tok), ids, sizes)
        assert not any("\ufffd" in d for d in deltas)
        assert "".join(deltas) == text


def test_flush_releases_a_trailing_partial_character(tok):
    """An output cut mid-character (max_tokens) ends like one decode of it: with U+FFFD, only at flush."""
    ids = tok.encode("ok 😀")
    cut = next(n for n in range(len(ids), 0, -1) if tok.decode(ids[:n]).endswith("\ufffd"))
    detok = IncrementalDetokenizer(tok)
    assert "\ufffd" not in "".join(detok.add([i]) for i in ids[:cut])
    assert detok.text + detok.flush() == tok.decode(ids[:cut])


def test_decode_window_stays_small(tok):
    """The cost per token is constant: each decode sees a few tokens, not the whole output."""
    ids = tok.encode((ENGLISH + EMOJI + CHINESE) * 5)
    sizes: list[int] = []

    class Recording(StepTokenizer):
        def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
            sizes.append(len(ids))
            return super().decode(ids, skip_special_tokens)

    detok = IncrementalDetokenizer(Recording(tok.tokenizer))
    assert "".join(stream(detok, ids, [1] * len(ids))) == tok.decode(ids)
    assert len(ids) > 400 and max(sizes) <= 8


STOP_CASES = [
    # (text, stop strings, text before the cut, the stop string that matched); stops start and end mid-token
    ("The quick brown fox jumps.", ["n fox j"], "The quick brow", "n fox j"),
    ("The quick brown fox jumps.", ["jumps."], "The quick brown fox ", "jumps."),
    ("The quick brown fox jumps.", ["The"], "", "The"),
    ("你好，世界。这是一个", ["界。这"], "你好，世", "界。这"),
    ("Paris 😀🎵 slow.", ["🎵"], "Paris 😀", "🎵"),
    # the earliest match wins, whatever the order of the list
    ("The quick brown fox jumps.", ["jumps", "quick", "fox"], "The ", "quick"),
    # overlapping matches: the one complete first wins ("own" ends before "brown fox" does) ...
    ("The quick brown fox jumps.", ["brown fox", "own"], "The quick br", "own"),
    # ... and of two ending together, the one that starts first
    ("The quick brown fox jumps.", ["own", "brown"], "The quick ", "brown"),
]


@pytest.mark.parametrize("include", [False, True])
@pytest.mark.parametrize(("text", "stop", "before", "matched"), STOP_CASES)
def test_stop_string_cut_at_every_split(tok, text, stop, before, matched, include):
    ids = tok.encode(text)
    assert len(ids) <= 14, "every grouping of the tokens is tried"
    expected = before + matched if include else before
    for sizes in groupings(len(ids)):
        detok = IncrementalDetokenizer(tok, stop=stop, include_stop_str_in_output=include)
        deltas = stream(detok, ids, sizes)
        assert "".join(deltas) == expected, sizes
        assert detok.stop_reason == matched


def test_partial_stop_string_is_held_until_decided(tok):
    """"fo" may begin "fox": held while streaming, released by flush when the output ends there."""
    ids = tok.encode("The quick brown fo")
    detok = IncrementalDetokenizer(tok, stop=["fox"])
    streamed = "".join(detok.add([i]) for i in ids)
    assert streamed == "The quick brown "
    assert detok.flush() == "fo" and detok.text == "The quick brown fo" and detok.stop_reason is None


def test_nothing_after_a_stop_string_is_emitted(tok):
    ids = tok.encode("The quick brown fox jumps over the lazy dog.")
    detok = IncrementalDetokenizer(tok, stop=["fox"])
    first = detok.add(ids[:-3])
    assert first == "The quick brown " and detok.stop_reason == "fox"
    assert detok.add(ids[-3:]) == "" and detok.add(tok.encode(" fox again")) == ""
    assert detok.flush() == "" and detok.text == "The quick brown "


def test_stop_string_over_special_tokens(tok):
    ids = tok.encode("The answer is B<|EOT|> more")
    detok = IncrementalDetokenizer(tok, skip_special_tokens=False, stop=["B<|EOT|>"], include_stop_str_in_output=True)
    assert "".join(stream(detok, ids, [1] * len(ids))) == "The answer is B<|EOT|>"


def test_empty_stop_string_is_refused(tok):
    with pytest.raises(ValueError, match="empty"):
        IncrementalDetokenizer(tok, stop=["x", ""])
