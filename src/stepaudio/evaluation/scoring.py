"""Scoring on the answer after `</think>` only (a reasoning chain names every option and would always fail).

- `string_match`: the MMAU / MMAR scorer's semantics: the gold option's words must all be in the
  prediction and no word that only a wrong option has may be (training_realtime_eval.md §6.3).
- `mcq_correct`: a bare letter ("B", "(B)", "B.", "Answer: B", "B. the option") is mapped to its option
  first, since the prompt lists options as "A. …"; then `string_match`.
- `short_correct`: normalised whole-word match (number words up to twenty count as digits; for a number
  the first one the answer gives counts); an answer that also names the opposite of yes/no or
  valid/invalid is wrong.
- `math_correct`: the final number of the answer (a \\boxed{} one first) equals the gold number.
"""

from __future__ import annotations

import re

from .items import EvalItem

THINK_END = "</think>"
_WORD = re.compile(r"\b\w+\b")
_LETTER = re.compile(r"^\W*(?:(?:the\s+)?(?:correct\s+)?(?:answer|option|choice)\s*(?:is)?\s*[:：]?\s*)?"
                     r"\(?([A-Za-z])\)?(?:$|[.:)\s])", re.IGNORECASE)
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:/\d+)?")
NUMBER_WORDS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
                "sixteen seventeen eighteen nineteen twenty").split()
_OPPOSITES = {"yes": "no", "no": "yes", "valid": "invalid", "invalid": "valid", "true": "false", "false": "true"}


def split_reasoning(text: str) -> tuple[str, str | None]:
    """(reasoning, answer) of raw model text; answer None when the think block never closed."""
    cut = text.rfind(THINK_END)
    if cut < 0:
        return text, None
    return text[:cut].removeprefix("<think>").strip(), text[cut + len(THINK_END):].strip()


def tokenize(text: str) -> set[str]:
    return set(_WORD.findall(text.lower()))


def string_match(answer: str, prediction: str, choices: tuple[str, ...] | list[str]) -> bool:
    """MMAU/MMAR `string_match`."""
    predicted, gold = tokenize(prediction), tokenize(answer)
    if not predicted:
        return False
    wrong: set[str] = set()
    for choice in choices:
        words = tokenize(choice)
        if words != gold:
            wrong |= words - gold
    return gold <= predicted and not predicted & wrong


def chosen_option(prediction: str, choices: tuple[str, ...]) -> str | None:
    """The option a reply names by its letter, if it starts with one that exists."""
    m = _LETTER.match(prediction.strip())
    if not m:
        return None
    index = ord(m.group(1).upper()) - 65
    # "A soft voice", "I think…": an article or a pronoun followed by words, not a letter.
    head, rest = prediction.strip()[:m.end()].rstrip(), prediction.strip()[m.end():].strip()
    if m.group(1).upper() in "AI" and rest and not head.endswith((".", ")", ":")):
        return None
    return choices[index] if 0 <= index < len(choices) else None


def mcq_correct(prediction: str, item: EvalItem) -> bool:
    option = chosen_option(prediction, item.choices)
    return string_match(item.answer, option if option is not None else prediction, item.choices)


def _normal_words(text: str) -> list[str]:
    words = re.findall(r"[a-z0-9]+(?:\.\d+)?", text.lower().replace(",", ""))
    return [str(NUMBER_WORDS.index(w)) if w in NUMBER_WORDS else w for w in words]


def short_correct(prediction: str, gold: str) -> bool:
    said, wanted = _normal_words(prediction), _normal_words(gold)
    if not said or not wanted:
        return False
    if len(wanted) == 1 and _number(wanted[0]) is not None:  # a number: the first one given is the answer
        numbers = [w for w in said if _number(w) is not None]
        return bool(numbers) and _number(numbers[0]) == _number(wanted[0])
    n = len(wanted)
    if not any(said[i:i + n] == wanted for i in range(len(said) - n + 1)):
        return False
    opposite = _OPPOSITES.get(" ".join(wanted))
    return opposite is None or opposite not in said


def _number(text: str) -> float | None:
    text = text.replace(",", "")
    try:
        if "/" in text:
            top, bottom = text.split("/")
            return float(top) / float(bottom)
        return float(text)
    except (ValueError, ZeroDivisionError):
        return None


def final_number(prediction: str) -> float | None:
    boxed = re.findall(r"\\boxed\{([^{}]*)\}", prediction)
    source = boxed[-1] if boxed else prediction
    words = " ".join(_normal_words(source)) if not _NUMBER.search(source.replace(",", "")) else source
    found = _NUMBER.findall(words.replace(",", ""))
    return _number(found[-1]) if found else None


def math_correct(prediction: str, gold: str) -> bool:
    got, want = final_number(prediction), final_number(gold)
    return got is not None and want is not None and abs(got - want) <= 1e-6 * max(1.0, abs(want))


def rule_correct(prediction: str, item: EvalItem) -> bool | None:
    """The rule-based verdict for an item's answer text; None for open items (a judge decides)."""
    if item.style == "mcq":
        return mcq_correct(prediction, item)
    if item.style == "math":
        return math_correct(prediction, item.answer)
    if item.style in ("short", "bba"):
        return short_correct(prediction, item.answer)
    return None
