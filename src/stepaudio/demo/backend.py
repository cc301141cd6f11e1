"""The demo's only road to the model: OpenAI chat requests over HTTP (our server or any compatible one).

Stop works by closing the HTTP stream: the server aborts the request and frees its KV cache, exactly
as when any client goes away. The stream is checked for Stop between received pieces.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from typing import Any

from ..client import Kind, ServerError, split_stream, stream_chat

THINKING_MODES = ("unlimited", "limited", "off")


def thinking_options(mode: str, budget_tokens: int) -> dict[str, Any]:
    """Request fields for the thinking control: off (answer at once), at most N tokens, or unlimited."""
    if mode == "off":
        return {"thinking": "off"}
    if mode == "limited":
        return {"thinking": "on", "max_thinking_tokens": int(budget_tokens)}
    if mode == "unlimited":
        return {"thinking": "on"}
    raise ValueError(f"thinking mode must be one of {', '.join(THINKING_MODES)}, got {mode!r}")


def sampling_options(max_tokens: int, temperature: float, top_p: float, thinking_mode: str,
                     thinking_budget: int) -> dict[str, Any]:
    """The request's sampling fields from the sliders."""
    return {"max_tokens": int(max_tokens), "temperature": float(temperature), "top_p": float(top_p),
            **thinking_options(thinking_mode, thinking_budget)}


def error_message(error: Exception) -> str:
    """A failed request as one readable chat message (Markdown), never a traceback."""
    if isinstance(error, ServerError):
        detail = str(error).strip() or "no details"
        return f"**The server could not answer.** {detail}"
    return f"**Something went wrong while talking to the server** ({type(error).__name__}): {error}"


class StopSignals:
    """One Stop flag per browser session, set by the Stop button and read by that session's stream."""

    def __init__(self) -> None:
        self._events: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def fresh(self, session: str) -> threading.Event:
        with self._lock:
            self._events[session] = event = threading.Event()
        return event

    def stop(self, session: str) -> None:
        with self._lock:
            event = self._events.get(session)
        if event is not None:
            event.set()


@dataclass
class Backend:
    api_base: str
    model: str
    api_key: str | None = None
    server_splits_reasoning: bool | None = None  # None: learn it from the stream (remote servers)

    def stream(self, messages: list[dict[str, Any]], options: dict[str, Any],
               stop: threading.Event) -> Iterator[tuple[Kind, str]]:
        """Thinking and answer pieces as they come; ends early (closing the request) once `stop` is set."""
        payload = {"model": self.model, "messages": messages, **options}
        chunks = stream_chat(self.api_base, payload, api_key=self.api_key)
        with closing(chunks):  # leaving early closes the HTTP stream, which aborts the request on the server
            starts_in_thinking = options.get("thinking") != "off"
            for piece in split_stream(chunks, self.server_splits_reasoning, starts_in_thinking=starts_in_thinking):
                if stop.is_set():
                    return
                yield piece
