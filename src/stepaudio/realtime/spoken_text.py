"""Text on its way to the voice: cut into clauses as it streams in, numbers and symbols written as words.

The TTS is fed one clause at a time so the first audio leaves after the first few words, not after the
whole answer. Numbers are read by num2words ("7 + 5 = 12" -> "seven plus five equals twelve"), so the
voice never spells digits or skips symbols and the transcript we send stays the model's own text.
"""

from __future__ import annotations

import re
import unicodedata

_OPERATORS = {"+": "plus", "-": "minus", "\u2212": "minus", "*": "times", "\u00d7": "times", "x": "times",
              "/": "divided by", "\u00f7": "divided by", "=": "equals", "^": "to the power of"}
_BETWEEN_NUMBERS = re.compile(r"(?<=\d)\s*([+\-\u2212*\u00d7x/\u00f7=^])\s*(?=[-\u2212]?\d)")
_NUMBER = re.compile(r"(?<![\w.])([-\u2212]?)(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?(st|nd|rd|th)?(%?)")
_LONE_SYMBOLS = {"=": " equals ", "+": " plus ", "%": " percent", "&": " and ", "\u00b0": " degrees"}
_CLAUSE_END = re.compile(r"[.!?;:,](?=\s)|\n")
_SPACES = re.compile(r"\s+")


def _say_number(match: re.Match[str]) -> str:
    from num2words import num2words  # the realtime extra; imported here so the server starts without it

    sign, whole, fraction, ordinal, percent = match.groups()
    digits = whole.replace(",", "")
    if ordinal and not fraction:
        words = num2words(int(digits), to="ordinal")
    elif fraction:
        words = num2words(float(digits + fraction))
    else:
        words = num2words(int(digits))
    return ("minus " if sign else "") + words + (" percent" if percent else "")


def spoken_form(text: str) -> str:
    """What the voice should say for `text`: operators between numbers, numbers and a few symbols as words.
    Control and other non-printing characters become spaces: a model can emit a NUL byte, which the
    phonemizer refuses (and nothing is said for them anyway)."""
    text = "".join(" " if unicodedata.category(c).startswith("C") else c for c in text)
    text = _BETWEEN_NUMBERS.sub(lambda m: f" {_OPERATORS[m.group(1)]} ", text)
    text = _NUMBER.sub(_say_number, text)
    for symbol, words in _LONE_SYMBOLS.items():
        text = text.replace(symbol, words)
    return _SPACES.sub(" ", text.replace("*", " ").replace("#", " ")).strip()


class ClauseSplitter:
    """Collects streamed text and hands back whole clauses: up to a clause mark (.,;:!? before a space, or a
    newline), or `max_words` words (`max_chars` characters) when a clause runs long, so a list of numbers
    still streams. The first clause of an answer is cut sooner, after `first_max_words`: the first audio
    waits only for those few words (a measured latency choice; later clauses keep natural phrasing)."""

    def __init__(self, max_words: int = 12, first_max_words: int = 5, max_chars: int = 80):
        self.max_words = max_words
        self.first_max_words = first_max_words
        self.max_chars = max_chars
        self._buffer = ""
        self._first = True

    def feed(self, text: str) -> list[str]:
        self._buffer += text
        clauses = []
        while True:
            limit = self.first_max_words if self._first else self.max_words
            mark = _CLAUSE_END.search(self._buffer)
            words = list(re.finditer(r"\S+\s", self._buffer))
            if mark is not None and sum(w.end() <= mark.end() for w in words) <= limit:
                cut = mark.end()
            elif len(words) >= limit:
                cut = words[limit - 1].end()
            elif len(self._buffer) >= self.max_chars:
                cut = self.max_chars
            else:
                break
            clause, self._buffer = self._buffer[:cut], self._buffer[cut:]
            if clause.strip():
                clauses.append(clause)
                self._first = False
        return clauses

    def flush(self) -> str:
        """The rest of the text, at the end of the answer (or "" when nothing is left)."""
        rest, self._buffer = self._buffer, ""
        return rest if rest.strip() else ""
