"""`--reasoning-parser step_audio` and `--tool-call-parser step_audio` for stock vLLM.

Both wrap this package's parsers (`stepaudio.text.reasoning`, `stepaudio.text.tools`), so vLLM splits
`</think>` as text (it is several tokens, not one special token) and finds `<tool_call>` blocks exactly
as our server does. Each vLLM request gets its own parser instances, so the streaming state is per choice.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from vllm.entrypoints.generate.base.protocol import (
    DeltaFunctionCall,
    DeltaMessage,
    DeltaToolCall,
    ExtractedToolCallInformation,
    FunctionCall,
    ToolCall,
)
from vllm.reasoning.abs_reasoning_parsers import ReasoningParser
from vllm.renderers.chat_utils import make_tool_call_id
from vllm.tool_parsers.abstract_tool_parser import ToolParser

from ..text.reasoning import THINK_END, THINK_START
from ..text.reasoning import ReasoningParser as StepReasoningSplitter
from ..text.reasoning import split_reasoning
from ..text.tools import ToolCallParser


# More tokens than `</think>` can ever take, so a marker ending in this step is inside the decoded tail.
_MARKER_TOKENS = 16


def _delta(reasoning: str = "", content: str = "") -> DeltaMessage | None:
    if not reasoning and not content:
        return None
    return DeltaMessage(reasoning=reasoning or None, content=content or None)


class StepAudioReasoningParser(ReasoningParser):
    """Reasoning is everything before the first text `</think>`; the R1 prompt opens the think block."""

    def __init__(self, tokenizer, *args, **kwargs):
        super().__init__(tokenizer, *args, **kwargs)
        self._splitter = StepReasoningSplitter(starts_in_reasoning=True)

    @property
    def reasoning_start_str(self) -> str:
        return THINK_START

    @property
    def reasoning_end_str(self) -> str:
        return THINK_END

    def is_reasoning_end(self, input_ids: Sequence[int]) -> bool:
        """Whether the last think block in these tokens is closed (old turns hold closed ones)."""
        text = self.model_tokenizer.decode(list(input_ids))
        return text.rfind(THINK_END) > text.rfind(THINK_START)

    def is_reasoning_end_streaming(self, input_ids: Sequence[int], delta_ids: Iterable[int]) -> bool:
        """Whether this step's tokens completed a `</think>`: only the tail is decoded, so a long think block
        costs no more per step than a short one (the engine core's structured-output gate calls this too)."""
        tail = list(input_ids[-(len(list(delta_ids)) + _MARKER_TOKENS):])
        return THINK_END in self.model_tokenizer.decode(tail)

    def extract_content_ids(self, input_ids: list[int]) -> list[int]:
        return []  # the split is in text; token ids of the answer are not separable in general

    def extract_reasoning(self, model_output: str, request) -> tuple[str | None, str | None]:
        reasoning, content = split_reasoning(model_output)
        return reasoning or None, content or None

    def extract_reasoning_streaming(self, previous_text: str, current_text: str, delta_text: str,
                                    previous_token_ids: Sequence[int], current_token_ids: Sequence[int],
                                    delta_token_ids: Sequence[int]) -> DeltaMessage | None:
        return _delta(*self._splitter.feed(delta_text))


def _tool_names(request) -> list[str] | None:
    tools = getattr(request, "tools", None)
    return [t.function.name for t in tools] if tools else None


class StepAudioToolParser(ToolParser):
    """`<tool_call>function\\n{name}\\n{json}</tool_call>` blocks; invalid blocks stay text, as in our server."""

    supports_required_and_named = False

    def __init__(self, tokenizer, tools=None):
        super().__init__(tokenizer, tools)
        self._stream: ToolCallParser | None = None

    def extract_tool_calls(self, model_output: str, request) -> ExtractedToolCallInformation:
        parser = ToolCallParser(_tool_names(request))
        text, calls = parser.feed(model_output)
        text += parser.finish()
        tool_calls = [ToolCall(id=make_tool_call_id(), function=FunctionCall(name=c.name, arguments=c.arguments))
                      for c in calls]
        return ExtractedToolCallInformation(tools_called=bool(tool_calls), tool_calls=tool_calls,
                                            content=text or None)

    def extract_tool_calls_streaming(self, previous_text: str, current_text: str, delta_text: str,
                                     previous_token_ids: Sequence[int], current_token_ids: Sequence[int],
                                     delta_token_ids: Sequence[int], request) -> DeltaMessage | None:
        if self._stream is None:
            self._stream = ToolCallParser(_tool_names(request))
        text, calls = self._stream.feed(delta_text)
        deltas = []
        for call in calls:
            self.current_tool_id += 1
            self.prev_tool_call_arr.append({"name": call.name, "arguments": call.arguments})
            self.streamed_args_for_tool.append(call.arguments)
            deltas.append(DeltaToolCall(index=self.current_tool_id, id=make_tool_call_id(), type="function",
                                        function=DeltaFunctionCall(name=call.name, arguments=call.arguments)))
        if not text and not deltas:
            return None
        return DeltaMessage(content=text or None, tool_calls=deltas)

