"""One choice's engine deltas -> the pieces of an OpenAI message, for streamed and whole responses alike.

With a reasoning parser the reasoning and the answer travel apart (`reasoning_content` and its
newer alias `reasoning`); without one, `content` is the raw text, `</think>` included, as the
official server sends it. When the request offers tools, Step-Audio tool calls in the answer
become OpenAI `tool_calls` and the finish reason "tool_calls".
"""

from __future__ import annotations

import uuid
from collections.abc import Collection
from dataclasses import dataclass, field

from ..engine.outputs import CompletionDelta
from ..engine.sampling import TokenLogprobs
from ..text.tokenizer import StepTokenizer
from ..text.tools import ToolCallParser
from .protocol import DeltaToolCall, FunctionCall, TokenLogprob, TopLogprob

# JSON has no -inf; vLLM sends this instead.
MIN_LOGPROB = -9999.0


@dataclass
class ChoicePiece:
    reasoning: str = ""
    content: str = ""
    tool_calls: list[DeltaToolCall] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None
    stop_reason: int | str | None = None

    @property
    def empty(self) -> bool:
        return not (self.reasoning or self.content or self.tool_calls or self.logprobs or self.finish_reason)


class ChoiceAssembler:
    def __init__(self, index: int, tokenizer: StepTokenizer, *, split_reasoning: bool,
                 tool_names: Collection[str] | None):
        self.index = index
        self._tokenizer = tokenizer
        self._split_reasoning = split_reasoning
        self._tools = ToolCallParser(tool_names) if tool_names is not None else None
        self.completion_tokens = 0
        self.reasoning_tokens = 0
        self.finish_reason: str | None = None

    def add(self, delta: CompletionDelta) -> ChoicePiece:
        piece = ChoicePiece(reasoning=delta.reasoning if self._split_reasoning else "",
                            content=delta.content if self._split_reasoning else delta.text,
                            logprobs=[self._logprob(lp) for lp in delta.logprobs])
        if self._tools is not None:
            piece.content, calls = self._tools.feed(piece.content)
            if delta.finish_reason is not None:
                piece.content += self._tools.finish()
            first = self._tools.num_calls - len(calls)
            piece.tool_calls = [DeltaToolCall(index=first + i, id=f"call_{uuid.uuid4().hex[:24]}",
                                              function=FunctionCall(name=c.name, arguments=c.arguments))
                                for i, c in enumerate(calls)]
        self.completion_tokens, self.reasoning_tokens = delta.completion_tokens, delta.reasoning_tokens
        if delta.finish_reason is not None:
            called = self._tools is not None and self._tools.num_calls > 0
            piece.finish_reason = "tool_calls" if called and delta.finish_reason == "stop" else delta.finish_reason
            piece.stop_reason = delta.stop_reason
            self.finish_reason = piece.finish_reason
        return piece

    def _entry(self, token_id: int, logprob: float) -> TopLogprob:
        text = self._tokenizer.decode([token_id])
        return TopLogprob(token=text, logprob=max(logprob, MIN_LOGPROB), bytes=list(text.encode("utf-8")))

    def _logprob(self, lp: TokenLogprobs) -> TokenLogprob:
        chosen = self._entry(lp.token_id, lp.logprob)
        return TokenLogprob(**chosen.model_dump(), top_logprobs=[self._entry(t, v) for t, v in lp.top])
