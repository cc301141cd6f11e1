"""The dual brain: one checkpoint run as two engine requests at once (Mind-Paced Speaking, reference §4.1).

The *formulation* stream is an ordinary thinking request stopped at `</think>`: it only thinks. Its reasoning
is cut into thought segments of `think_segment_tokens` tokens. The *articulation* stream writes the spoken
answer one segment at a time; each segment is a fresh engine request whose prompt is

    user turn (ending in `<think>\\n`) + thought segments 1..n + `\\n</think>\\n` + the answer said so far

so it continues the answer in the light of every thought formed so far (Eq. 3 of the paper). Both streams
are plain requests of the shared AsyncEngine, so they batch with every other conversation, and the prefix
cache serves the repeated user turn. Leaving `run()` early aborts both requests (their KV is freed at once).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from dataclasses import dataclass, field, replace

import torch

from ..engine.async_engine import AsyncEngine
from ..engine.engine import THINK_CLOSE
from ..engine.sampling import SamplingParams, child_seed
from ..text.reasoning import THINK_END, THINK_START
from .pacing import Pacing

logger = logging.getLogger("stepaudio.realtime")
THINK_OPEN = THINK_START + "\n"
_ids = itertools.count()


@dataclass
class Thought:
    index: int
    text: str
    ready_at: float          # perf_counter time the segment was complete


@dataclass
class Launch:
    """One articulation request: what it was given (kept for tests and the timeline)."""

    segment: int
    prompt_ids: list[int]
    thoughts: int            # thought segments in its prefix
    complete: bool           # the prefix holds the whole reasoning; this request runs to the end
    at: float


@dataclass
class ThinkingDelta:
    text: str


@dataclass
class ThoughtReady:
    thought: Thought


@dataclass
class SpeechDelta:
    segment: int
    text: str


@dataclass
class ThinkAheadMargin:
    """Audio already sent that was still left to play when the thought the next segment needs was ready
    (negative: the listener heard silence, the invariant was violated)."""

    segment: int
    seconds: float


BrainEvent = ThinkingDelta | ThoughtReady | SpeechDelta | ThinkAheadMargin


@dataclass
class BrainResult:
    thoughts: list[Thought] = field(default_factory=list)
    said_text: str = ""
    finish_reason: str | None = None


class DualBrain:
    """Runs one response. `playback_end()` says when the audio sent so far will have finished playing
    (perf_counter time, None while nothing was sent); it is how the think-ahead margin is measured."""

    def __init__(self, engine: AsyncEngine, prompt_ids: list[int], mels: list[torch.Tensor], pacing: Pacing,
                 params: SamplingParams, playback_end: Callable[[], float | None] = lambda: None):
        tokenizer = engine.engine.tokenizer
        self.engine = engine
        self.tokenizer = tokenizer
        open_ids = tokenizer.encode(THINK_OPEN)
        self.user_ids = list(prompt_ids) if prompt_ids[-len(open_ids):] == open_ids else list(prompt_ids) + open_ids
        self.mels = mels
        self.pacing = pacing
        self.params = params
        self.playback_end = playback_end
        self.close_ids = tokenizer.encode(THINK_CLOSE)
        # Not carried into the next segment's prompt: an end of text (ignore_eos samples it), and an audio
        # patch, which a prompt may only hold where audio features fill it (the engine refuses the request).
        self._unsaid = set(tokenizer.eos_token_ids) | {tokenizer.audio_patch_id}
        self.launches: list[Launch] = []
        self.result = BrainResult()
        self._tag = f"rt-{next(_ids)}"
        self._thought_done = not pacing.thinks
        self._changed = asyncio.Event()
        self._events: asyncio.Queue[BrainEvent | None] = asyncio.Queue()

    @property
    def thoughts(self) -> list[Thought]:
        return self.result.thoughts

    def articulation_prompt(self, said_ids: list[int], thoughts: int) -> list[int]:
        text = "".join(t.text for t in self.thoughts[:thoughts])
        thought_ids = self.tokenizer.encode(text) if text else []
        return self.user_ids + thought_ids + self.close_ids + said_ids

    async def run(self) -> AsyncIterator[BrainEvent]:
        tasks = [asyncio.ensure_future(self._articulate())]
        if self.pacing.thinks:
            tasks.append(asyncio.ensure_future(self._formulate()))
        try:
            while (event := await self._events.get()) is not None:
                yield event
            if not tasks[-1].done() or tasks[-1].exception() is None:  # the formulation did not fail
                await asyncio.wait(tasks[:1])
            for task in tasks:
                if task.done() and not task.cancelled() and task.exception() is not None:
                    raise task.exception()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    # ---- formulation: think only, in segments ----------------------------------------------------

    async def _formulate(self) -> None:
        size = self.pacing.think_segment_tokens
        params = replace(self.params, stop=[THINK_END], max_thinking_tokens=self.pacing.max_thinking_tokens,
                         max_tokens=self.pacing.max_thinking_tokens + len(self.close_ids) + 1, thinking="on")
        pending, tokens = "", 0
        try:
            async with aclosing(self.engine.generate(f"{self._tag}-think", self.user_ids, self.mels, params)) as outs:
                async for out in outs:
                    delta = out.deltas[0]
                    if delta.reasoning:
                        pending += delta.reasoning
                        self._events.put_nowait(ThinkingDelta(delta.reasoning))
                    tokens = delta.reasoning_tokens
                    if tokens >= size * (len(self.thoughts) + 1) and pending and not out.finished:
                        self._add_thought(pending)
                        pending = ""
            if pending:
                self._add_thought(pending)
        except Exception:
            self._events.put_nowait(None)
            raise
        finally:
            self._thought_done = True
            self._changed.set()

    def _add_thought(self, text: str) -> None:
        thought = Thought(len(self.thoughts), text, time.perf_counter())
        self.thoughts.append(thought)
        self._events.put_nowait(ThoughtReady(thought))
        self._changed.set()

    # ---- articulation: speak, one segment per engine request -------------------------------------

    async def _wait_for_thoughts(self, segment: int) -> int:
        """Wait until the schedule lets `segment` be written; the thought segments it gets."""
        while True:
            total = len(self.thoughts) if self._thought_done else None
            needed = self.pacing.thoughts_needed(segment, total)
            if len(self.thoughts) >= needed:
                return len(self.thoughts)
            self._changed.clear()
            await self._changed.wait()

    def _margin(self, segment: int, thoughts: int) -> None:
        played_until = self.playback_end()
        if thoughts == 0 or played_until is None:
            return
        margin = played_until - self.thoughts[thoughts - 1].ready_at
        if margin < 0:
            logger.warning("think-ahead margin violated before segment %d: thought %d was ready %.3f s after the "
                           "audio sent so far finished playing", segment, thoughts, -margin)
        self._events.put_nowait(ThinkAheadMargin(segment, margin))

    async def _articulate(self) -> None:
        said_ids: list[int] = []
        said = ""
        try:
            for segment in itertools.count():
                thoughts = await self._wait_for_thoughts(segment)
                complete = self._thought_done and thoughts == len(self.thoughts)
                left = self.pacing.max_response_tokens - len(said_ids)
                cap = left if complete else min(left, self.pacing.response_segment_tokens)
                if segment > 0:
                    self._margin(segment, thoughts)
                prompt = self.articulation_prompt(said_ids, thoughts)
                room = self.engine.engine.max_model_len - len(prompt)
                if room < 1:   # thoughts and speech fill the context: the answer ends as if at its limit
                    self.result.finish_reason = "length"
                    break
                cap = min(cap, room)
                self.launches.append(Launch(segment, prompt, thoughts, complete, time.perf_counter()))
                seed = None if self.params.seed is None else child_seed(self.params.seed, segment + 1)
                params = replace(self.params, max_tokens=cap, thinking="on", max_thinking_tokens=None, stop=[],
                                 seed=seed)
                finish = None
                async with aclosing(self.engine.generate(f"{self._tag}-say{segment}", prompt, self.mels,
                                                         params)) as outs:
                    async for out in outs:
                        delta = out.deltas[0]
                        said_ids += [t for t in delta.token_ids if t not in self._unsaid]
                        if delta.content:
                            said += delta.content
                            self._events.put_nowait(SpeechDelta(segment, delta.content))
                        finish = delta.finish_reason or finish
                if finish != "length" or len(said_ids) >= self.pacing.max_response_tokens:
                    self.result.finish_reason = finish
                    break
            self.result.said_text = said
        finally:
            self._events.put_nowait(None)
