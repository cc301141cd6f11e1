"""One spoken answer: the dual brain's words cut into clauses, each clause synthesized and sent at once.

The Responder keeps the playback clock (when the audio sent so far will have finished playing, assuming
the client plays it as it arrives), which gives the brain its think-ahead margin and barge-in its cut:
what was not yet played is dropped from the transcript the conversation keeps.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from .dual_brain import DualBrain, SpeechDelta, ThinkAheadMargin, ThinkingDelta, ThoughtReady
from .metrics import RealtimeMetrics
from .spoken_text import ClauseSplitter
from .tts import PiperSpeaker, SpokenChunk

Send = Callable[[dict], Awaitable[None]]


@dataclass
class SentAudio:
    chunk: SpokenChunk
    starts_at: float      # perf_counter time this chunk begins to play at the client


@dataclass
class Timeline:
    turn_end: float
    first_thought: float | None = None
    first_text: float | None = None
    first_audio: float | None = None
    done: float | None = None
    margins: list[float] = field(default_factory=list)

    def since_turn_end(self) -> dict[str, str]:
        """Seconds from the end of the user's turn, as response metadata (string values, as OpenAI's are)."""
        marks = {"first_thought_s": self.first_thought, "first_text_s": self.first_text,
                 "first_audio_s": self.first_audio, "done_s": self.done}
        out = {k: f"{v - self.turn_end:.3f}" for k, v in marks.items() if v is not None}
        if self.margins:
            out["min_think_ahead_margin_s"] = f"{min(self.margins):.3f}"
        return out


class Responder:
    def __init__(self, send: Send, speaker: PiperSpeaker, metrics: RealtimeMetrics, schedule: str,
                 response_id: str, item_id: str, turn_end: float):
        self.send = send
        self.speaker = speaker
        self.metrics = metrics
        self.schedule = schedule
        self.ids = {"response_id": response_id, "item_id": item_id, "output_index": 0, "content_index": 0}
        self.timeline = Timeline(turn_end)
        self.sent: list[SentAudio] = []
        self._play_end: float | None = None
        self._clauses: asyncio.Queue[str | None] = asyncio.Queue()

    def playback_end(self) -> float | None:
        return self._play_end

    def played_text(self, at: float | None = None) -> tuple[str, int]:
        """What the listener had heard by `at` (default now): the text of every chunk that began playing,
        and the milliseconds of audio played."""
        at = time.perf_counter() if at is None else at
        heard = [s for s in self.sent if s.starts_at <= at]
        played = sum(min(s.chunk.seconds, at - s.starts_at) for s in heard)
        return "".join(s.chunk.text for s in heard), int(played * 1000)

    @property
    def spoken_text(self) -> str:
        return "".join(s.chunk.text for s in self.sent)

    async def run(self, brain: DualBrain) -> None:
        labels = (self.metrics.model_name, self.schedule)
        speaking = asyncio.ensure_future(self._speak())
        splitter = ClauseSplitter()
        try:
            async for event in brain.run():
                now = time.perf_counter()
                if isinstance(event, ThinkingDelta):
                    await self.send({"type": "response.thinking.delta", **self.ids, "delta": event.text,
                                     "segment": len(brain.thoughts)})
                elif isinstance(event, ThoughtReady):
                    self.timeline.first_thought = self.timeline.first_thought or now
                elif isinstance(event, SpeechDelta):
                    self.timeline.first_text = self.timeline.first_text or now
                    for clause in splitter.feed(event.text):
                        self._clauses.put_nowait(clause)
                elif isinstance(event, ThinkAheadMargin):
                    self.timeline.margins.append(event.seconds)
                    self.metrics.margin.labels(*labels).observe(event.seconds)
                    if event.seconds < 0:
                        self.metrics.margin_violations.labels(*labels).inc()
            if rest := splitter.flush():
                self._clauses.put_nowait(rest)
            self._clauses.put_nowait(None)
            await speaking
        finally:
            speaking.cancel()
            await asyncio.gather(speaking, return_exceptions=True)
        self.timeline.done = time.perf_counter()

    async def _speak(self) -> None:
        while (clause := await self._clauses.get()) is not None:
            chunk = await asyncio.to_thread(self.speaker.speak, clause)
            if not chunk.pcm16:
                continue
            now = time.perf_counter()
            if self.timeline.first_audio is None:
                self.timeline.first_audio = now
                self.metrics.first_audio.labels(self.metrics.model_name, self.schedule).observe(
                    now - self.timeline.turn_end)
            self.metrics.tts_rtf.labels(self.metrics.model_name).observe(chunk.synthesis_seconds / chunk.seconds)
            starts = max(now, self._play_end or now)
            self._play_end = starts + chunk.seconds
            self.sent.append(SentAudio(chunk, starts))
            await self.send({"type": "response.output_audio.delta", **self.ids,
                             "delta": base64.b64encode(chunk.pcm16).decode("ascii")})
            await self.send({"type": "response.output_audio_transcript.delta", **self.ids, "delta": chunk.text})
