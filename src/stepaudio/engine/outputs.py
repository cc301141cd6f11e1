"""What the engine hands back each step: per-request deltas, finish reasons and token counts."""

from __future__ import annotations

from dataclasses import dataclass, field

from .sampling import TokenLogprobs


@dataclass
class CompletionDelta:
    """New output of one of the request's n sequences since the previous step."""

    index: int
    token_ids: list[int]
    text: str                   # raw text (reasoning, `</think>` and answer, as upstream's content)
    reasoning: str              # the part of `text` inside the think block
    content: str                # the part after `</think>`
    logprobs: list[TokenLogprobs] = field(default_factory=list)
    finish_reason: str | None = None   # "stop", "length" or "abort" once finished
    stop_reason: str | int | None = None
    completion_tokens: int = 0         # generated so far by this sequence (forced `</think>` tokens included)
    reasoning_tokens: int = 0          # of those, generated inside the think block


@dataclass
class RequestOutput:
    request_id: str
    deltas: list[CompletionDelta]
    prompt_tokens: int          # the whole rendered prompt, audio rows included
    audio_tokens: int           # of those, <audio_patch> rows
    cached_tokens: int          # of those, served from the prefix cache (0 until prefill has run)
    finished: bool              # every sequence of the request has finished
    error: Exception | None = None  # the request failed alone (its prefill or its outputs); it is gone
