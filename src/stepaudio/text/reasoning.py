"""Split model output into reasoning and answer at the text `</think>` (not a single token)."""

from __future__ import annotations

THINK_END = "</think>"


def split_reasoning(text: str) -> tuple[str, str]:
    """The prompt is prefilled with `<think>\\n`, so output starts inside the think block.

    Everything before the first `</think>` is reasoning; what follows (minus the newline the model
    writes after the marker) is the answer. Output that never closes the block is all reasoning.
    """
    reasoning, marker, answer = text.partition(THINK_END)
    if not marker:
        return text.strip("\n"), ""
    return reasoning.strip("\n"), answer.lstrip("\n")
