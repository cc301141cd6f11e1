"""A small realtime client: send one spoken turn, collect the spoken answer and when each part arrived.

Used by `stepaudio talk`, the benchmark and the tests. It speaks the same events as the `openai` client
(manual turns: session.update with turn_detection null, append, commit, response.create).
"""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from websockets.sync.client import ClientConnection, connect

from ..audio.io import resample
from .tts import OUTPUT_RATE

APPEND_SECONDS = 0.1     # audio per append event, as a microphone would send it


def realtime_url(api_base: str, model: str | None = None) -> str:
    """ws(s)://host/v1/realtime?model=... from an OpenAI API base (http(s)://host/v1), as the openai client does."""
    url = api_base.rstrip("/").replace("https://", "wss://", 1).replace("http://", "ws://", 1) + "/realtime"
    return url + (f"?model={model}" if model else "")


def pcm16_24k(wav: np.ndarray, sr: int) -> bytes:
    wav = resample(np.asarray(wav, dtype=np.float32), sr, OUTPUT_RATE)
    return (np.clip(wav, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()


@dataclass
class TurnResult:
    status: str = ""
    status_details: dict[str, Any] | None = None   # e.g. why an answer is incomplete or cancelled
    transcript: str = ""
    thinking: str = ""
    audio: bytearray = field(default_factory=bytearray)
    errors: list[dict[str, Any]] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)
    marks: dict[str, float] = field(default_factory=dict)    # client-side seconds from the commit
    event_types: list[str] = field(default_factory=list)

    @property
    def audio_seconds(self) -> float:
        return len(self.audio) / 2 / OUTPUT_RATE


class RealtimeClient:
    def __init__(self, url: str, api_key: str | None = None, timeout: float = 600.0):
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
        self.ws: ClientConnection = connect(url, additional_headers=headers, max_size=None, open_timeout=30)
        self.timeout = timeout

    def __enter__(self) -> RealtimeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.ws.close()

    def send(self, event: dict[str, Any]) -> None:
        self.ws.send(json.dumps(event))

    def recv(self, timeout: float | None = None) -> dict[str, Any]:
        return json.loads(self.ws.recv(timeout=timeout or self.timeout))

    def configure(self, **stepaudio: Any) -> dict[str, Any]:
        """Manual turns, with our schedule options; returns the session.updated event."""
        self.send({"type": "session.update", "session": {"type": "realtime",
                                                        "audio": {"input": {"turn_detection": None}},
                                                        "stepaudio": stepaudio}})
        while (event := self.recv())["type"] != "session.updated":
            if event["type"] == "error":
                raise ValueError(event["error"]["message"])
        return event

    def ask(self, pcm16: bytes, text: str | None = None) -> TurnResult:
        """One turn: stream the audio, commit, ask for the answer, and read events until response.done.
        With `text`, the turn is one user item holding the text and then the audio (as `stepaudio eval`
        sends its Spoken-MQA instruction); the clock then starts at response.create."""
        if text is not None:
            self.send({"type": "conversation.item.create", "item": {"type": "message", "role": "user", "content": [
                {"type": "input_text", "text": text},
                {"type": "input_audio", "audio": base64.b64encode(pcm16).decode("ascii")}]}})
            start = time.perf_counter()
            self.send({"type": "response.create"})
            return self.read_response(start)
        step = int(APPEND_SECONDS * OUTPUT_RATE) * 2
        for i in range(0, len(pcm16), step):
            self.send({"type": "input_audio_buffer.append",
                       "audio": base64.b64encode(pcm16[i:i + step]).decode("ascii")})
        self.send({"type": "input_audio_buffer.commit"})
        start = time.perf_counter()
        self.send({"type": "response.create"})
        return self.read_response(start)

    def read_response(self, start: float) -> TurnResult:
        result = TurnResult()
        while True:
            event = self.recv()
            kind = event["type"]
            result.event_types.append(kind)
            now = time.perf_counter() - start
            if kind == "response.thinking.delta":
                result.marks.setdefault("first_thought", now)
                result.thinking += event["delta"]
            elif kind == "response.output_audio.delta":
                result.marks.setdefault("first_audio", now)
                result.audio += base64.b64decode(event["delta"])
            elif kind == "response.output_audio_transcript.delta":
                result.transcript += event["delta"]
            elif kind == "error":
                result.errors.append(event["error"])
            elif kind == "response.done":
                result.marks["done"] = now
                result.status = event["response"]["status"]
                result.status_details = event["response"].get("status_details")
                result.metadata = event["response"].get("metadata") or {}
                return result
