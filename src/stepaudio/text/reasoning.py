"""Split model output into reasoning and answer at the text `</think>` (not a single token).

The R1 prompt is prefilled with `<think>\\n`, so the output starts inside the think block and reads
`reasoning...\\n</think>\\nanswer`. `ReasoningParser` splits a stream of text deltas; `split_reasoning`
runs the same parser over a whole text, so both give the same answer.
"""

from __future__ import annotations

from collections.abc import Collection
from enum import Enum

THINK_START = "<think>"
THINK_END = "</think>"


def partial_marker_length(text: str, markers: Collection[str]) -> int:
    """Length of the longest end of `text` that is a proper prefix of one of `markers`.

    That end must be held back from a stream: the next delta decides whether it is a marker.
    """
    longest = max((len(m) for m in markers), default=0)
    for n in range(min(longest - 1, len(text)), 0, -1):
        tail = text[-n:]
        if any(m.startswith(tail) for m in markers):
            return n
    return 0


class _Phase(Enum):
    START = "start"          # only whitespace so far: a re-emitted `<think>` may still come
    REASONING = "reasoning"  # inside the think block, until `</think>`
    CONTENT = "content"      # the answer: everything passes through


class ReasoningParser:
    """Streaming splitter of text deltas into (reasoning, content) deltas.

    Everything before the first `</think>` is reasoning and everything after is content, even a
    second `</think>`. Markers are in neither, nor is the one "\\n" the model writes after each.
    A leading `<think>` (after optional whitespace) is dropped: the model sometimes re-emits the
    prefilled one. With `starts_in_reasoning=False` (a prompt that closed or skipped the think
    block) the output is content unless it starts with `<think>`. Text that may be the start of a
    marker is held back until a later delta, or `finish`, decides.
    """

    def __init__(self, starts_in_reasoning: bool = True):
        self._starts_in_reasoning = starts_in_reasoning
        self._phase = _Phase.START
        self._pending = ""
        self._drop_newline = False

    def feed(self, delta: str) -> tuple[str, str]:
        """(reasoning_delta, content_delta) for the next piece of output text."""
        self._pending += delta
        if self._phase is _Phase.START:
            self._resolve_start()
        reasoning = self._take_reasoning() if self._phase is _Phase.REASONING else ""
        content = self._take_content() if self._phase is _Phase.CONTENT else ""
        return reasoning, content

    def finish(self) -> tuple[str, str]:
        """Release held-back text at the end of the output: a partial marker is plain text after all."""
        if self._phase is _Phase.START:
            self._phase = self._default_phase()
        rest, self._pending = self._pending, ""
        self._drop_newline = False
        return (rest, "") if self._phase is _Phase.REASONING else ("", rest)

    def _default_phase(self) -> _Phase:
        return _Phase.REASONING if self._starts_in_reasoning else _Phase.CONTENT

    def _resolve_start(self) -> None:
        """Drop a leading `<think>` (and whitespace before it) once the text shows whether there is one."""
        head = self._pending.lstrip()
        if head.startswith(THINK_START):
            self._pending = head[len(THINK_START):]
            self._enter(_Phase.REASONING)
        elif not THINK_START.startswith(head):
            self._phase = self._default_phase()

    def _take_reasoning(self) -> str:
        """Reasoning up to `</think>`, or up to a possible partial marker at the end."""
        self._skip_marker_newline()
        reasoning, marker, rest = self._pending.partition(THINK_END)
        if marker:
            self._pending = rest
            self._enter(_Phase.CONTENT)
            return reasoning
        cut = len(self._pending) - partial_marker_length(self._pending, (THINK_END,))
        reasoning, self._pending = self._pending[:cut], self._pending[cut:]
        return reasoning

    def _take_content(self) -> str:
        self._skip_marker_newline()
        content, self._pending = self._pending, ""
        return content

    def _enter(self, phase: _Phase) -> None:
        """Switch phase after a marker; the newline after a marker belongs to the marker."""
        self._phase = phase
        self._drop_newline = True

    def _skip_marker_newline(self) -> None:
        """Drop one "\\n" right after a marker, as soon as the first character after it is known."""
        if self._drop_newline and self._pending:
            if self._pending.startswith("\n"):
                self._pending = self._pending[1:]
            self._drop_newline = False


def split_reasoning(text: str, starts_in_reasoning: bool = True) -> tuple[str, str]:
    """(reasoning, answer) of a whole output; same rules as the streaming `ReasoningParser`."""
    parser = ReasoningParser(starts_in_reasoning=starts_in_reasoning)
    reasoning, answer = parser.feed(text)
    tail_reasoning, tail_answer = parser.finish()
    return reasoning + tail_reasoning, answer + tail_answer
