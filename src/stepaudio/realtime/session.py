"""One realtime conversation: the OpenAI Realtime client events in, server events out.

The session holds the input audio buffer, the conversation items and at most one response at a time.
Every bad event is answered with an `error` event (OpenAI's shape: error.type, code, message, param,
event_id) and the connection stays open. Audio is pcm16 mono 24 kHz both ways; the model hears it
resampled to 16 kHz. Barge-in (speech while an answer plays) cancels the answer, which aborts both
engine streams, and truncates the kept transcript to what had been played.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

from ..audio.io import SAMPLE_RATE, resample
from ..engine.async_engine import AsyncEngine
from ..engine.sampling import SamplingParams
from ..inputs import prepare_chat, resolve_audio_parts
from ..server.errors import APIError
from .dual_brain import DualBrain
from .metrics import RealtimeMetrics
from .responder import Responder, Send
from .session_config import SessionConfig, SessionError
from ..train.speech import SynthesisError
from .tts import OUTPUT_RATE, PiperSpeaker
from .vad import TurnDetector

logger = logging.getLogger("stepaudio.realtime")
MIN_COMMIT_MS = 100      # OpenAI refuses to commit less than 100 ms of audio


def _id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:20]}"


@dataclass
class Item:
    id: str
    role: str                       # "user", "assistant" or "system"
    text: str = ""
    audio: np.ndarray | None = None  # 16 kHz float32, for user audio
    spoken: list[tuple[str, float]] = field(default_factory=list)  # assistant: (text, seconds) per audio chunk

    def as_event_item(self, status: str = "completed") -> dict[str, Any]:
        if self.role == "assistant":
            content = [{"type": "output_audio", "transcript": self.text}]
        elif self.audio is not None:
            content = [{"type": "input_audio", "transcript": None}]
        else:
            content = [{"type": "input_text", "text": self.text}]
        return {"id": self.id, "object": "realtime.item", "type": "message", "role": self.role, "status": status,
                "content": content}

    def as_message(self) -> dict[str, Any]:
        if self.audio is not None:
            parts = ([{"type": "text", "text": self.text}] if self.text else []) + [{"type": "audio", "audio": self.audio}]
            return {"role": self.role, "content": parts}
        return {"role": self.role, "content": self.text}


@dataclass
class Limits:
    max_buffer_seconds: float = 60.0        # one turn of input audio
    max_conversation_audio_seconds: float = 600.0
    template: str | None = None


class EventError(ValueError):
    def __init__(self, message: str, code: str = "invalid_value", param: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.code, self.param, self.kind = code, param, kind


class RealtimeSession:
    def __init__(self, send: Send, engine: AsyncEngine, speaker: PiperSpeaker, metrics: RealtimeMetrics,
                 config: SessionConfig, limits: Limits):
        self._send_raw = send
        self.engine = engine
        self.speaker = speaker
        self.metrics = metrics
        self.config = config
        self.limits = limits
        self.id = _id("sess")
        self.items: list[Item] = []
        self.buffer = bytearray()
        self.buffer_start_ms = 0               # position of the buffer's first byte in the session's audio
        self.audio_ms = 0                      # input audio received in this session
        self._vad_origin_ms = 0
        self.vad: TurnDetector | None = None
        self.response: asyncio.Task | None = None
        self.responder: Responder | None = None
        self._cancel_reason = "client_cancelled"
        self._closed = False
        self._draining = False                 # the server is shutting down: no new answers
        self._speech_start_ms: int | None = None
        self._pending_item = ""                # the item id announced with speech_started
        self._turn_end = time.perf_counter()   # when the last user turn was committed
        self._handlers = {
            "session.update": self._session_update,
            "input_audio_buffer.append": self._append,
            "input_audio_buffer.commit": self._commit_event,
            "input_audio_buffer.clear": self._clear,
            "conversation.item.create": self._item_create,
            "conversation.item.delete": self._item_delete,
            "conversation.item.truncate": self._item_truncate,
            "response.create": self._response_create,
            "response.cancel": self._response_cancel,
            "output_audio_buffer.clear": self._output_clear,
        }

    # ---- plumbing -------------------------------------------------------------------------------

    async def send(self, event: dict[str, Any]) -> None:
        if self._closed:
            return
        try:
            await self._send_raw({"event_id": _id("event"), **event})
        except Exception:  # the socket is gone: the receive loop will see the disconnect and close()
            self._closed = True
            raise

    async def error(self, message: str, code: str, param: str | None = None, event_id: str | None = None,
                    kind: str = "invalid_request_error") -> None:
        await self.send({"type": "error", "error": {"type": kind, "code": code, "message": message, "param": param,
                                                    "event_id": event_id}})

    async def start(self) -> None:
        self._voice = asyncio.ensure_future(asyncio.to_thread(self.speaker.load))  # 1-2 s, once per server
        self._reset_vad()
        await self.send({"type": "session.created", "session": self.config.as_event_session(self.id)})

    async def close(self) -> None:
        """The client left: stop sending and abort the answer in flight (both engine streams)."""
        self._closed = True
        if self.response is not None and not self.response.done():
            self._cancel_reason = "client_disconnected"
            self.response.cancel()
            await asyncio.gather(self.response, return_exceptions=True)

    async def wind_down(self, close: Callable[[], Awaitable[None]]) -> None:
        """The server is draining: start no new answer, let the one in flight finish, then say why and close."""
        self._draining = True
        if self.response is not None:
            await asyncio.gather(self.response, return_exceptions=True)
        with contextlib.suppress(Exception):  # the client may have left meanwhile
            await self.error("the server is shutting down; reconnect later or to another replica",
                             "server_shutting_down", kind="server_error")
            await close()

    def stop_answering(self) -> None:
        """The drain's deadline: cancel the answer in flight (its response.done says why)."""
        if self.response is not None and not self.response.done():
            self._cancel_reason = "server_shutting_down"
            self.response.cancel()

    async def handle(self, raw: str | bytes) -> None:
        event_id = None
        try:
            try:
                event = json.loads(raw)
            except (ValueError, UnicodeDecodeError) as e:
                raise EventError(f"the message is not valid JSON: {e}", code="invalid_json") from None
            if not isinstance(event, dict):
                raise EventError("an event must be a JSON object", code="invalid_event")
            event_id = event.get("event_id") if isinstance(event.get("event_id"), str) else None
            kind = event.get("type")
            handler = self._handlers.get(kind) if isinstance(kind, str) else None
            if handler is None:
                raise EventError(f"unknown or unsupported event type {event.get('type')!r}", code="invalid_event",
                                 param="type")
            await handler(event)
        except SessionError as e:
            await self.error(str(e), e.code, e.param, event_id)
        except EventError as e:
            await self.error(str(e), e.code, e.param, event_id, e.kind)
        except Exception as e:  # a bug must not end the conversation: say so and carry on
            if self._closed:
                raise
            logger.exception("realtime event failed")
            await self.error(f"internal error: {type(e).__name__}: {e}", "server_error", None, event_id, "server_error")

    # ---- session --------------------------------------------------------------------------------

    async def _session_update(self, event: dict[str, Any]) -> None:
        self.config = self.config.updated(event.get("session"))
        self._reset_vad()
        await self.send({"type": "session.updated", "session": self.config.as_event_session(self.id)})

    def _reset_vad(self) -> None:
        td = self.config.turn_detection
        self.vad = None if td is None else TurnDetector(OUTPUT_RATE, td["threshold"], td["silence_duration_ms"])
        self._speech_start_ms = None
        self._vad_origin_ms = self.audio_ms    # the detector counts from its own start

    # ---- input audio ----------------------------------------------------------------------------

    async def _append(self, event: dict[str, Any]) -> None:
        audio = event.get("audio")
        if not isinstance(audio, str):
            raise EventError("input_audio_buffer.append needs 'audio': base64 pcm16", param="audio")
        try:
            pcm = base64.b64decode(audio, validate=True)
        except (binascii.Error, ValueError):
            raise EventError("audio is not valid base64", code="invalid_audio", param="audio") from None
        if len(pcm) % 2:
            raise EventError("audio must be pcm16 (an even number of bytes: 16-bit mono samples at 24 kHz)",
                             code="invalid_audio", param="audio")
        limit = int(self.limits.max_buffer_seconds * OUTPUT_RATE) * 2
        if len(self.buffer) + len(pcm) > limit:
            raise EventError(f"the input audio buffer would exceed {self.limits.max_buffer_seconds:g} s; commit or "
                             "clear it first (this chunk was not added)", code="input_audio_buffer_too_large",
                             param="audio")
        self.buffer += pcm
        self.audio_ms += len(pcm) // 2 * 1000 // OUTPUT_RATE
        for vad_event in self.vad.feed(pcm) if self.vad is not None else []:
            ms = self._vad_origin_ms + vad_event.ms
            if vad_event.kind == "start":
                await self._speech_started(ms)
            elif self._speech_start_ms is not None:
                await self._speech_stopped(ms)

    async def _speech_started(self, ms: int) -> None:
        self._speech_start_ms = ms
        item_id = _id("item")
        self._pending_item = item_id
        await self.send({"type": "input_audio_buffer.speech_started", "audio_start_ms": ms, "item_id": item_id})
        if self.response is not None and not self.response.done() and self.config.turn_detection["interrupt_response"]:
            self.metrics.barge_ins.labels(self.metrics.model_name).inc()
            await self._cancel("turn_detected")

    async def _speech_stopped(self, ms: int) -> None:
        start = self._speech_start_ms
        self._speech_start_ms = None
        await self.send({"type": "input_audio_buffer.speech_stopped", "audio_end_ms": ms, "item_id": self._pending_item})
        pad = self.config.turn_detection["prefix_padding_ms"]
        begin = max(0, (start - pad - self.buffer_start_ms)) * OUTPUT_RATE // 1000 * 2
        end = max(0, ms - self.buffer_start_ms) * OUTPUT_RATE // 1000 * 2
        await self._commit(self._pending_item, begin, end)
        if self.config.turn_detection["create_response"]:
            await self._start_response({})

    async def _commit_event(self, event: dict[str, Any]) -> None:
        await self._commit(_id("item"), 0, len(self.buffer))

    async def _commit(self, item_id: str, begin: int, end: int) -> None:
        pcm = bytes(self.buffer[begin:end])
        if len(pcm) // 2 * 1000 // OUTPUT_RATE < MIN_COMMIT_MS:
            raise EventError(f"buffer too small: at least {MIN_COMMIT_MS} ms of audio are needed to commit, "
                             f"got {len(pcm) // 2 * 1000 // OUTPUT_RATE} ms", code="input_audio_buffer_commit_empty")
        self._turn_end = time.perf_counter()
        self.buffer = bytearray()
        self.buffer_start_ms = self.audio_ms
        wav = resample(np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0, OUTPUT_RATE, SAMPLE_RATE)
        previous = self.items[-1].id if self.items else None
        item = Item(item_id, "user", audio=wav)
        self.items.append(item)
        await self.send({"type": "input_audio_buffer.committed", "item_id": item_id, "previous_item_id": previous})
        await self._announce_item(item, previous)

    async def _clear(self, event: dict[str, Any]) -> None:
        self.buffer = bytearray()
        self.buffer_start_ms = self.audio_ms
        await self.send({"type": "input_audio_buffer.cleared"})

    async def _output_clear(self, event: dict[str, Any]) -> None:
        await self._cancel("client_cancelled")
        await self.send({"type": "output_audio_buffer.cleared", "response_id": None})

    # ---- conversation items ---------------------------------------------------------------------

    async def _announce_item(self, item: Item, previous: str | None) -> None:
        await self.send({"type": "conversation.item.added", "previous_item_id": previous, "item": item.as_event_item()})
        await self.send({"type": "conversation.item.done", "previous_item_id": previous, "item": item.as_event_item()})

    async def _item_create(self, event: dict[str, Any]) -> None:
        raw = event.get("item")
        if not isinstance(raw, dict) or raw.get("type", "message") != "message":
            raise EventError("only message items are supported", param="item.type")
        role = raw.get("role")
        if role not in ("user", "assistant", "system"):
            raise EventError("item.role must be user, assistant or system", param="item.role")
        item_id = raw.get("id") or _id("item")
        if not isinstance(item_id, str):
            raise EventError("item.id must be a string", param="item.id")
        content = raw.get("content") or []
        if not isinstance(content, list):
            raise EventError("item.content must be a list of content parts", param="item.content")
        text, audio = "", None
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind in ("input_text", "text", "output_text"):
                text += str(part.get("text") or "")
            elif kind == "input_audio" and role == "user":
                try:
                    pcm = base64.b64decode(part.get("audio") or "", validate=True)
                except (binascii.Error, ValueError, TypeError):
                    raise EventError("item audio is not valid base64", code="invalid_audio",
                                     param="item.content") from None
                audio = resample(np.frombuffer(pcm[: len(pcm) // 2 * 2], dtype="<i2").astype(np.float32) / 32768.0,
                                 OUTPUT_RATE, SAMPLE_RATE)
            else:
                raise EventError(f"unsupported content part {kind!r} for a {role} item", param="item.content")
        previous = self.items[-1].id if self.items else None
        item = Item(item_id, role, text, audio)
        self.items.append(item)
        if role == "user":   # a turn given whole: it ends now (first-audio latency counts from here)
            self._turn_end = time.perf_counter()
        await self._announce_item(item, previous)

    def _find(self, item_id: Any) -> Item:
        for item in self.items:
            if item.id == item_id:
                return item
        raise EventError(f"no item with id {item_id!r}", code="item_not_found", param="item_id")

    async def _item_delete(self, event: dict[str, Any]) -> None:
        self.items.remove(self._find(event.get("item_id")))
        await self.send({"type": "conversation.item.deleted", "item_id": event.get("item_id")})

    async def _item_truncate(self, event: dict[str, Any]) -> None:
        item = self._find(event.get("item_id"))
        ms = event.get("audio_end_ms")
        if item.role != "assistant" or not isinstance(ms, int) or ms < 0:
            raise EventError("truncate needs an assistant item and audio_end_ms >= 0", param="audio_end_ms")
        kept, at = "", 0.0
        for text, seconds in item.spoken:
            if at * 1000 >= ms:
                break
            kept, at = kept + text, at + seconds
        item.text = kept
        await self.send({"type": "conversation.item.truncated", "item_id": item.id, "content_index": 0,
                         "audio_end_ms": ms})

    # ---- responses ------------------------------------------------------------------------------

    async def _response_create(self, event: dict[str, Any]) -> None:
        await self._start_response(event.get("response") or {})

    async def _response_cancel(self, event: dict[str, Any]) -> None:
        if self.response is None or self.response.done():
            raise EventError("there is no response in progress to cancel", code="response_cancel_not_active")
        await self._cancel("client_cancelled")

    async def _cancel(self, reason: str) -> None:
        if self.response is not None and not self.response.done():
            self._cancel_reason = reason
            self.response.cancel()
            await asyncio.gather(self.response, return_exceptions=True)

    async def _start_response(self, overrides: Any) -> None:
        if self._draining:
            raise EventError("the server is shutting down; no new responses", code="server_shutting_down",
                             kind="server_error")
        if self.response is not None and not self.response.done():
            raise EventError("a response is already in progress; cancel it first",
                             code="conversation_already_has_active_response")
        if not isinstance(overrides, dict):
            raise EventError("response must be an object", param="response")
        config = self.config.updated({k: v for k, v in overrides.items() if k in ("instructions", "stepaudio",
                                                                                  "max_output_tokens")})
        if not any(item.role == "user" for item in self.items):
            raise EventError("the conversation has no user turn to answer yet", code="conversation_empty")
        try:
            await self._voice
        except SynthesisError as e:  # piper or its voice is not installed
            raise EventError(str(e), code="tts_unavailable", kind="server_error") from None
        self._cancel_reason = "client_cancelled"
        self.response = asyncio.ensure_future(self._respond(config, self._turn_end))

    async def _prompt(self, config: SessionConfig):
        llm = self.engine.engine
        messages = ([{"role": "system", "content": config.instructions}] if config.instructions else []) + \
            [item.as_message() for item in self.items]
        seconds = sum(len(i.audio) for i in self.items if i.audio is not None) / SAMPLE_RATE
        if seconds > self.limits.max_conversation_audio_seconds:
            raise EventError(f"the conversation holds {seconds:.0f} s of audio; at most "
                             f"{self.limits.max_conversation_audio_seconds:g} s", code="audio_too_long")

        def render():
            resolved, chunks = resolve_audio_parts(messages)
            return prepare_chat(llm.tokenizer, resolved, chunks, n_mels=llm.model.config.audio.n_mels,
                                formula=llm.config.audio_token_formula, template=self.limits.template)

        prompt = await asyncio.to_thread(render)
        if len(prompt.token_ids) >= llm.max_model_len:
            raise EventError(f"the conversation is {len(prompt.token_ids)} tokens; the model holds "
                             f"{llm.max_model_len}", code="context_length_exceeded")
        return prompt

    async def _respond(self, config: SessionConfig, turn_end: float) -> None:
        response_id, item_id = _id("resp"), _id("item")
        schedule = config.pacing.schedule
        base = {"id": response_id, "object": "realtime.response", "output_modalities": ["audio"],
                "conversation_id": self.id}
        responder = Responder(self.send, self.speaker, self.metrics, schedule, response_id, item_id, turn_end)
        self.responder = responder
        status, details = "completed", None
        item = Item(item_id, "assistant")
        await self.send({"type": "response.created", "response": {**base, "status": "in_progress", "output": []}})
        await self.send({"type": "response.output_item.added", "response_id": response_id, "output_index": 0,
                         "item": item.as_event_item("in_progress")})
        await self.send({"type": "conversation.item.added", "previous_item_id": self.items[-1].id,
                         "item": item.as_event_item("in_progress")})
        part = {"response_id": response_id, "item_id": item_id, "output_index": 0, "content_index": 0}
        await self.send({"type": "response.content_part.added", **part, "part": {"type": "audio", "transcript": ""}})
        try:
            prompt = await self._prompt(config)
            params = SamplingParams(temperature=config.temperature, seed=config.seed, ignore_eos=config.ignore_eos)
            brain = DualBrain(self.engine, prompt.token_ids, prompt.mels, config.pacing, params,
                              responder.playback_end)
            await responder.run(brain)
            item.text = responder.spoken_text
            if brain.result.finish_reason == "length":  # cut by max_output_tokens (or the context), as OpenAI
                status, details = "incomplete", {"type": "incomplete", "reason": "max_output_tokens"}
        except asyncio.CancelledError:
            status, details = "cancelled", {"type": "cancelled", "reason": self._cancel_reason}
            item.text, played_ms = responder.played_text()
            if not self._closed and responder.sent:
                await self.send({"type": "conversation.item.truncated", "item_id": item_id, "content_index": 0,
                                 "audio_end_ms": played_ms})
        except EventError as e:
            status, details = "failed", {"type": "failed", "error": {"type": e.kind, "code": e.code}}
            await self.error(str(e), e.code, e.param)
        except Exception as e:  # the engine refused or failed this answer; the session goes on
            if self._closed:
                return
            logger.exception("realtime response %s failed", response_id)
            code = e.code if isinstance(e, APIError) and e.code else "engine_error"  # e.g. failed by a shutdown
            status, details = "failed", {"type": "failed", "error": {"type": "server_error", "code": code}}
            await self.error(f"the answer failed: {type(e).__name__}: {e}", code, kind="server_error")
        item.spoken = [(s.chunk.text, s.chunk.seconds) for s in responder.sent]
        if item.text or status in ("completed", "incomplete"):
            self.items.append(item)
        if not responder.sent:
            self.metrics.dropped_turns.labels(self.metrics.model_name).inc()
        self.metrics.responses.labels(self.metrics.model_name, status).inc()
        transcript = item.text
        await self.send({"type": "response.output_audio.done", **part})
        await self.send({"type": "response.output_audio_transcript.done", **part, "transcript": transcript})
        await self.send({"type": "response.content_part.done", **part,
                         "part": {"type": "audio", "transcript": transcript}})
        done_item = item.as_event_item("completed" if status == "completed" else "incomplete")
        await self.send({"type": "response.output_item.done", "response_id": response_id, "output_index": 0,
                         "item": done_item})
        await self.send({"type": "conversation.item.done", "item": done_item})
        await self.send({"type": "response.done", "response": {
            **base, "status": status, "status_details": details, "output": [done_item],
            "metadata": {"schedule": schedule, **responder.timeline.since_turn_end()}}})
