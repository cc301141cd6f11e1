"""Chat completions: run prepared inputs through the AsyncEngine and answer as one JSON body or as SSE chunks.

Leaving the engine stream early (a client disconnect cancels the task, or closes the SSE generator)
aborts the request in the engine, which frees its KV blocks at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field

from ..engine.async_engine import AsyncEngine
from ..engine.engine import RequestError
from ..engine.outputs import RequestOutput
from .choices import ChoiceAssembler, ChoicePiece
from .errors import APIError, bad_request
from .metrics import RequestTracker
from .prepare import EngineInputs
from .protocol import (
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    Choice,
    ChoiceLogprobs,
    ChunkChoice,
    CompletionTokensDetails,
    DeltaMessage,
    PromptTokensDetails,
    ResponseMessage,
    ToolCallOut,
    Usage,
)
from .settings import ServerSettings

logger = logging.getLogger("stepaudio.server")

DONE = "[DONE]"


@dataclass
class _WholeChoice:
    """A choice's pieces joined into one message."""

    reasoning: str = ""
    content: str = ""
    tool_calls: list[ToolCallOut] = field(default_factory=list)
    logprobs: list = field(default_factory=list)
    finish_reason: str | None = None
    stop_reason: int | str | None = None

    def add(self, piece: ChoicePiece) -> None:
        self.reasoning += piece.reasoning
        self.content += piece.content
        self.tool_calls += [ToolCallOut(id=c.id, function=c.function) for c in piece.tool_calls]
        self.logprobs += piece.logprobs
        if piece.finish_reason is not None:
            self.finish_reason, self.stop_reason = piece.finish_reason, piece.stop_reason

    def choice(self, index: int, split_reasoning: bool, with_logprobs: bool) -> Choice:
        message = ResponseMessage(content=None if self.tool_calls and not self.content else self.content,
                                  tool_calls=self.tool_calls)
        if split_reasoning and self.reasoning:
            message.reasoning_content = message.reasoning = self.reasoning
        return Choice(index=index, message=message, finish_reason=self.finish_reason, stop_reason=self.stop_reason,
                      logprobs=ChoiceLogprobs(content=self.logprobs) if with_logprobs else None)


class ChatServing:
    def __init__(self, engine: AsyncEngine, settings: ServerSettings):
        self.engine = engine
        self.settings = settings

    @property
    def split_reasoning(self) -> bool:
        return self.settings.reasoning_parser is not None

    def _assemblers(self, request: ChatCompletionRequest) -> list[ChoiceAssembler]:
        names = {t.function.name for t in request.tools or []} if request.wants_tool_calls else None
        return [ChoiceAssembler(i, self.engine.engine.tokenizer, split_reasoning=self.split_reasoning,
                                tool_names=names) for i in range(request.n)]

    async def _outputs(self, request_id: str, inputs: EngineInputs,
                       tracker: RequestTracker) -> AsyncIterator[RequestOutput]:
        prompt = inputs.prompt
        try:
            async with aclosing(self.engine.generate(request_id, prompt.token_ids, prompt.mels, inputs.params)) as outs:
                async for out in outs:
                    if any(d.token_ids for d in out.deltas):
                        tracker.output()
                    yield out
        except (GeneratorExit, asyncio.CancelledError):  # the client left (a closed stream, a cancelled task)
            tracker.aborted()
            raise

    def _usage(self, out: RequestOutput, assemblers: list[ChoiceAssembler]) -> Usage:
        completion = sum(a.completion_tokens for a in assemblers)
        return Usage(prompt_tokens=out.prompt_tokens, completion_tokens=completion,
                     total_tokens=out.prompt_tokens + completion,
                     prompt_tokens_details=PromptTokensDetails(cached_tokens=out.cached_tokens,
                                                               audio_tokens=out.audio_tokens,
                                                               text_tokens=out.prompt_tokens - out.audio_tokens),
                     completion_tokens_details=CompletionTokensDetails(
                         reasoning_tokens=sum(a.reasoning_tokens for a in assemblers)))

    def _finished(self, tracker: RequestTracker, out: RequestOutput, assemblers: list[ChoiceAssembler]) -> Usage:
        """The request's usage, also counted in the metrics."""
        usage = self._usage(out, assemblers)
        tracker.finished(out.prompt_tokens, out.audio_tokens, usage.completion_tokens,
                         usage.completion_tokens_details.reasoning_tokens,
                         [a.finish_reason or "unknown" for a in assemblers])
        return usage

    async def full(self, request_id: str, request: ChatCompletionRequest, inputs: EngineInputs, model: str,
                   tracker: RequestTracker) -> ChatCompletionResponse:
        assemblers = self._assemblers(request)
        whole = [_WholeChoice() for _ in assemblers]
        last = None
        try:
            async with aclosing(self._outputs(request_id, inputs, tracker)) as outputs:
                async for last in outputs:
                    for delta in last.deltas:
                        whole[delta.index].add(assemblers[delta.index].add(delta))
        except RequestError as e:
            raise bad_request(str(e), param="messages") from None
        if last is None or not last.finished:
            raise APIError(500, "the engine ended the request without finishing it", code="engine_error")
        usage = self._finished(tracker, last, assemblers)
        choices = [w.choice(i, self.split_reasoning, request.logprobs) for i, w in enumerate(whole)]
        return ChatCompletionResponse(id=request_id, model=model, choices=choices, usage=usage)

    async def stream(self, request_id: str, request: ChatCompletionRequest, inputs: EngineInputs, model: str,
                     tracker: RequestTracker) -> AsyncIterator[str]:
        """SSE data payloads: a role chunk per choice, content chunks, the usage chunk if asked, then [DONE].

        The role chunks wait for the first output, so a client's time to first chunk includes the prefill,
        as with vLLM (its serving benchmark times exactly that)."""
        created = int(time.time())
        options = request.stream_options
        include_usage = options is not None and options.include_usage
        continuous = include_usage and options.continuous_usage_stats
        assemblers = self._assemblers(request)

        def chunk(choices: list[ChunkChoice], usage: Usage | None = None) -> str:
            return ChatCompletionChunk(id=request_id, created=created, model=model, choices=choices,
                                       usage=usage).model_dump_json()

        role_sent = False
        try:
            async with aclosing(self._outputs(request_id, inputs, tracker)) as outputs:
                async for out in outputs:
                    if not role_sent:  # as vLLM: the role chunks come with the first output, after prefill
                        role_sent = True
                        for a in assemblers:
                            yield chunk([ChunkChoice(index=a.index, delta=DeltaMessage(role="assistant", content=""))])
                    pieces = [(d.index, assemblers[d.index].add(d)) for d in out.deltas]
                    choices = [self._chunk_choice(i, p, request.logprobs) for i, p in pieces if not p.empty]
                    if choices:
                        yield chunk(choices, self._usage(out, assemblers) if continuous else None)
                    if out.finished:
                        usage = self._finished(tracker, out, assemblers)
                        if include_usage:
                            yield chunk([], usage)
        except RequestError as e:
            yield _error_event(bad_request(str(e), param="messages"))
        except APIError as e:  # e.g. 503: the server shut down before the request finished
            yield _error_event(e)
        except Exception as e:  # the engine failed this request; the stream still ends cleanly
            logger.exception("engine failure in stream %s", request_id)
            yield _error_event(APIError(500, f"engine error: {type(e).__name__}: {e}", code="engine_error"))
        yield DONE

    def _chunk_choice(self, index: int, piece: ChoicePiece, with_logprobs: bool) -> ChunkChoice:
        reasoning = piece.reasoning or None
        delta = DeltaMessage(content=piece.content or None, reasoning_content=reasoning, reasoning=reasoning,
                             tool_calls=piece.tool_calls or None)
        return ChunkChoice(index=index, delta=delta, finish_reason=piece.finish_reason,
                           stop_reason=piece.stop_reason,
                           logprobs=ChoiceLogprobs(content=piece.logprobs) if with_logprobs else None)


def _error_event(error: APIError) -> str:
    """vLLM's way to fail a stream whose 200 headers are already sent: an error object as a data event."""
    return json.dumps({**error.body(), "status_code": error.status})
