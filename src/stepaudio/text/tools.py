"""Tool calls in the Step-Audio format, found in the answer text (spec §5.3).

The model writes a call as `<tool_call>function\\n{name}\\n{json arguments}</tool_call>`, possibly
several in a row, with ordinary text around them. `ToolCallParser` splits a stream of text deltas
into plain text and finished calls; a whole answer is one delta followed by `finish`, so a
streamed answer and a whole one give the same calls.

Like StepFun's vLLM parser, a call counts only when its arguments are JSON and its name is one of
the offered tools. Unlike it, a block that fails those checks (or never closes) is kept as text
rather than dropped, so nothing the model wrote disappears.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass

from .reasoning import partial_marker_length

TOOL_CALL_START = "<tool_call>"
TOOL_CALL_END = "</tool_call>"


@dataclass
class ToolCall:
    name: str
    arguments: str  # a JSON object as text, as OpenAI's `function.arguments`


def parse_tool_call_block(block: str, tool_names: Collection[str] | None = None) -> ToolCall | None:
    """The call inside one `<tool_call>...</tool_call>` block, or None when it is not a valid call."""
    lines = block.lstrip().split("\n", 2)
    if len(lines) != 3:
        return None
    _kind, name, arguments = (part.strip() for part in lines)
    if not name or (tool_names is not None and name not in tool_names):
        return None
    try:
        value = json.loads(arguments) if arguments else {}
    except json.JSONDecodeError:
        return None
    return ToolCall(name=name, arguments=json.dumps(value, ensure_ascii=False))


class ToolCallParser:
    """Streaming splitter of answer text into (text delta, finished tool calls).

    Text that may be the start of `<tool_call>` is held back until the next delta decides; a call's
    text is held until its `</tool_call>`.
    """

    def __init__(self, tool_names: Collection[str] | None = None):
        self._tool_names = tool_names
        self._pending = ""
        self._in_call = False
        self.num_calls = 0

    def feed(self, delta: str) -> tuple[str, list[ToolCall]]:
        self._pending += delta
        text, calls = "", []
        while True:
            if self._in_call:
                block, marker, rest = self._pending.partition(TOOL_CALL_END)
                if not marker:
                    return text, calls
                self._pending, self._in_call = rest, False
                call = parse_tool_call_block(block, self._tool_names)
                if call is None:
                    text += TOOL_CALL_START + block + TOOL_CALL_END
                else:
                    calls.append(call)
                    self.num_calls += 1
            else:
                before, marker, rest = self._pending.partition(TOOL_CALL_START)
                if not marker:
                    cut = len(before) - partial_marker_length(before, (TOOL_CALL_START,))
                    self._pending = before[cut:]
                    return text + before[:cut], calls
                text += before
                self._pending, self._in_call = rest, True

    def finish(self) -> str:
        """The held-back text at the end of the output (an unclosed call stays text)."""
        rest = (TOOL_CALL_START if self._in_call else "") + self._pending
        self._pending, self._in_call = "", False
        return rest

