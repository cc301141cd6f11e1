"""Client helpers for a Step-Audio chat server (ours, or the official vLLM recipe).

- `audio_parts`: an audio file as `input_audio` parts, one 16 kHz 16-bit WAV per 25 s chunk, the
  way the official client sends long audio;
- `ThinkingSplitter` / `split_stream`: a chat-completions stream as ("thinking", text) and
  ("answer", text) pieces, whether the server splits reasoning (`reasoning_content`) or sends the
  raw text with `</think>` in `content`;
- `stream_chat`: POST a streaming request and yield its chunks, with plain httpx;
- `api_base_url`: what a user types as the server address, as the OpenAI API base (`/v1` added to a bare
  address, as every OpenAI-compatible server serves there).
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx
import numpy as np
import soundfile as sf

from .audio.io import CHUNK_SECONDS, SAMPLE_RATE, load_audio, split_chunks
from .text.reasoning import ReasoningParser

Kind = Literal["thinking", "answer"]


class ServerError(OSError):
    """The server could not be reached, refused the request or failed it mid-stream."""


def wav_bytes(wav: np.ndarray, sample_rate: int = SAMPLE_RATE) -> bytes:
    """16-bit PCM WAV of a float waveform (clipped to [-1, 1], as the first official client did)."""
    buf = io.BytesIO()
    sf.write(buf, np.clip(wav, -1.0, 1.0), sample_rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def audio_parts(source: str | Path | bytes, max_seconds: float = CHUNK_SECONDS) -> list[dict[str, Any]]:
    """One `input_audio` part per <= 25 s chunk of the audio, in order."""
    return waveform_parts(load_audio(source), max_seconds)


def waveform_parts(wav: np.ndarray, max_seconds: float = CHUNK_SECONDS) -> list[dict[str, Any]]:
    """One `input_audio` part per <= 25 s chunk of a 16 kHz mono waveform already decoded."""
    chunks = split_chunks(wav, max_seconds=max_seconds)
    return [{"type": "input_audio",
             "input_audio": {"data": base64.b64encode(wav_bytes(c)).decode("ascii"), "format": "wav"}}
            for c in chunks]


def user_message(text: str = "", audio: str | Path | bytes | None = None) -> dict[str, Any]:
    """A user turn as the official examples build it: the text, then the audio chunks."""
    content: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
    if audio is not None:
        content += audio_parts(audio)
    return {"role": "user", "content": content}


def _field(obj: Any, name: str) -> Any:
    """A delta field from a dict or an openai-python object (where extra fields are attributes)."""
    return obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)


class ThinkingSplitter:
    """Turns stream deltas into ("thinking" | "answer", text) pieces.

    `server_splits_reasoning`: True when the server sends reasoning apart (content is the answer),
    False when content is the raw text. None: decide from the stream, assuming raw text until a
    reasoning field shows up. `starts_in_thinking`: False when the request turned thinking off.
    """

    def __init__(self, server_splits_reasoning: bool | None = None, starts_in_thinking: bool = True):
        self._splits = server_splits_reasoning
        self._raw = ReasoningParser(starts_in_reasoning=starts_in_thinking)

    def feed(self, delta: Any) -> list[tuple[Kind, str]]:
        pieces: list[tuple[Kind, str]] = []
        reasoning = _field(delta, "reasoning_content") or _field(delta, "reasoning")
        if reasoning:
            self._splits = True
            pieces.append(("thinking", reasoning))
        content = _field(delta, "content")
        if content:
            if self._splits:
                pieces.append(("answer", content))
            else:
                thinking, answer = self._raw.feed(content)
                pieces += [(k, t) for k, t in (("thinking", thinking), ("answer", answer)) if t]
        return pieces

    def finish(self) -> list[tuple[Kind, str]]:
        thinking, answer = self._raw.finish()
        return [(k, t) for k, t in (("thinking", thinking), ("answer", answer)) if t]


def split_stream(chunks: Iterable[Any], server_splits_reasoning: bool | None = None,
                 starts_in_thinking: bool = True) -> Iterator[tuple[Kind, str]]:
    """Thinking and answer pieces of a stream of chunks (dicts or openai `ChatCompletionChunk`s), choice 0."""
    splitter = ThinkingSplitter(server_splits_reasoning, starts_in_thinking)
    for chunk in chunks:
        for choice in _field(chunk, "choices") or []:
            if _field(choice, "index") == 0:
                yield from splitter.feed(_field(choice, "delta"))
    yield from splitter.finish()


def error_message(body: bytes | str, limit: int = 200) -> str:
    """The `error.message` of an OpenAI-style error body; else the body's first `limit` characters."""
    try:
        return str(json.loads(body)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return (body.decode("utf-8", "replace") if isinstance(body, bytes) else body)[:limit]


def _raise_for_error(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    response.read()
    raise ServerError(f"HTTP {response.status_code}: {error_message(response.content)}")


def stream_chat(api_base: str, payload: dict[str, Any], api_key: str | None = None,
                timeout: float | None = 600.0) -> Iterator[dict[str, Any]]:
    """POST /chat/completions with stream=true and yield each chunk as a dict until [DONE]."""
    url = api_base.rstrip("/") + "/chat/completions"
    try:
        with httpx.stream("POST", url, json={**payload, "stream": True}, headers=_auth(api_key),
                          timeout=timeout) as response:
            _raise_for_error(response)
            for line in response.iter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    return
                chunk = json.loads(data)
                if "error" in chunk:
                    raise ServerError(chunk["error"].get("message", "the server failed the request"))
                yield chunk
    except httpx.HTTPError as e:
        raise ServerError(f"{url}: {e}") from None


def api_base_url(address: str) -> str:
    """An http(s) server address as its OpenAI API base: `http://host:9999` means `http://host:9999/v1`;
    an address with a path is kept as it is (a proxy may serve the API anywhere)."""
    parts = urlsplit(address.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"not an http(s) URL like http://127.0.0.1:9999/v1: {address!r}")
    base = address.strip().rstrip("/")
    return base + "/v1" if parts.path in ("", "/") else base


def list_models(api_base: str, api_key: str | None = None, timeout: float = 30.0) -> list[str]:
    """The served model names, first the default one."""
    url = api_base.rstrip("/") + "/models"
    try:
        response = httpx.get(url, headers=_auth(api_key), timeout=timeout)
    except httpx.HTTPError as e:
        raise ServerError(f"{url}: {e}") from None
    if response.status_code == 404:
        raise ServerError(f"HTTP 404 at {url}: no OpenAI API at {api_base}; an API base usually ends in /v1")
    _raise_for_error(response)
    return [m["id"] for m in response.json()["data"]]


def _auth(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}
