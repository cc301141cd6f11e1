"""One evaluation item, whatever benchmark layout it was read from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# How an item is prompted and scored (spec §6 / the upstream example scripts):
#   mcq   — options listed "A. …", scored by the MMAU/MMAR string match after mapping a letter to its option;
#   short — a short answer (a number, a word), normalised whole-word match;
#   math  — Spoken-MQA style "solve step by step", the final number compared numerically;
#   bba   — Big Bench Audio: the question is in the audio, answer valid/invalid, yes/no or a number;
#   open  — free text, scored only by an LLM judge.
STYLES = ("mcq", "short", "math", "bba", "open")


@dataclass(frozen=True)
class EvalItem:
    id: str
    audio: tuple[str, ...]          # absolute paths or URLs, in prompt order
    question: str
    answer: str                     # the option text for mcq items
    choices: tuple[str, ...] = ()
    category: str = "all"
    style: str = "short"
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if self.style not in STYLES:
            raise ValueError(f"item {self.id!r}: task must be one of {', '.join(STYLES)}, got {self.style!r}")
        if self.style == "mcq" and self.answer not in self.choices:
            raise ValueError(f"item {self.id!r}: the answer {self.answer!r} is not one of its choices")
