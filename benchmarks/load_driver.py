"""Traffic for the soak and the load ramp: one request of a given kind, what the client saw, and the server's side.

Kinds: text or audio, streamed or not, a stream the client drops after two chunks ("disconnect") and a
whole-response request the client gives up on ("timeout"). Each request ends in an `Outcome`: the status
and, for an error, whether its body had the OpenAI error shape. `ServerProbe` reads /metrics and the
server process's resident memory, so a run can compare the server's counts with the client's.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench_serving import MODEL, QUESTION, audio_message

KINDS = ("text", "text_stream", "audio", "audio_stream", "disconnect", "timeout")
ENDLESS_TOKENS = 4000   # the kinds the client abandons ask for more than can finish while it watches
TIMEOUT_SECONDS = 0.3   # how long a "timeout" client waits for a whole response
ERROR_FIELDS = {"message", "type", "param", "code"}


@dataclass
class Outcome:
    kind: str
    status: int | None = None     # HTTP status; None when the connection failed before one came
    clean: bool = False           # a full response, a clean OpenAI-style error, or a drop the client chose
    completed: bool = False       # the model's answer arrived to its end
    problem: str = ""             # what was not clean
    stream_error: str = ""        # the message of a stream's error event (a clean error)
    ttft: float = 0.0
    latency: float = 0.0
    itl: list[float] = field(default_factory=list)
    output_tokens: int = 0


def request_body(kind: str, index: int, max_tokens: int, audio_seconds: float) -> dict:
    audio = kind.startswith("audio") or (kind in ("disconnect", "timeout") and index % 2 == 0)
    messages = audio_message(index, audio_seconds) if audio else [
        {"role": "user", "content": f"{QUESTION} (request {index})"}]
    endless = kind in ("disconnect", "timeout")
    body = {"model": MODEL, "messages": messages, "temperature": 0, "ignore_eos": True,
            "max_tokens": ENDLESS_TOKENS if endless else max_tokens}
    if kind.endswith("stream") or kind == "disconnect":
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    return body


def is_error_body(data: object) -> bool:
    return isinstance(data, dict) and isinstance(data.get("error"), dict) and set(data["error"]) == ERROR_FIELDS


async def one(client: httpx.AsyncClient, url: str, kind: str, index: int, max_tokens: int = 8,
              audio_seconds: float = 1.0) -> Outcome:
    """Send one request of `kind` to the chat route at `url` and say how it ended."""
    body = request_body(kind, index, max_tokens, audio_seconds)
    out, start = Outcome(kind), time.perf_counter()
    try:
        if body.get("stream"):
            await _stream(client, url, body, out, start)
        else:
            timeout = httpx.Timeout(30, read=TIMEOUT_SECONDS) if kind == "timeout" else None
            response = await client.post(url, json=body, **({"timeout": timeout} if timeout else {}))
            out.status = response.status_code
            data = response.json()
            if response.status_code == 200:
                out.output_tokens = data["usage"]["completion_tokens"]
                out.completed = out.clean = data["choices"][0]["finish_reason"] is not None
            else:
                out.clean = is_error_body(data)
                out.problem = "" if out.clean else f"error body {response.text[:200]!r}"
    except httpx.ReadTimeout:
        out.clean = kind == "timeout"
        out.problem = "" if out.clean else "read timeout"
    except (httpx.HTTPError, ValueError, KeyError) as e:
        out.problem = f"{type(e).__name__}: {e}"
    out.latency = time.perf_counter() - start
    if kind == "timeout" and out.status is not None:
        out.problem = f"a request that cannot finish in {TIMEOUT_SECONDS} s answered {out.status}"
        out.clean = out.status >= 400 and out.clean
    return out


async def _stream(client: httpx.AsyncClient, url: str, body: dict, out: Outcome, start: float) -> None:
    last, chunks = start, 0
    async with client.stream("POST", url, json=body) as response:
        out.status = response.status_code
        if response.status_code != 200:
            data = json.loads(await response.aread())
            out.clean = is_error_body(data)
            out.problem = "" if out.clean else f"error body {data!r:.200}"
            return
        async for line in response.aiter_lines():
            if not line.startswith("data:"):
                continue
            payload = line[5:].strip()
            if payload == "[DONE]":
                out.clean = out.problem == ""
                return
            chunk = json.loads(payload)
            if "error" in chunk:
                if is_error_body({"error": chunk["error"]}):
                    out.stream_error = chunk["error"]["message"]
                else:
                    out.problem = f"malformed error event {chunk!r:.200}"
                continue
            now = time.perf_counter()
            if chunk.get("choices"):
                chunks += 1
                if out.ttft == 0.0:
                    out.ttft = now - start
                else:
                    out.itl.append(now - last)
                last = now
                if any(c.get("finish_reason") for c in chunk["choices"]):
                    out.completed = True
            if chunk.get("usage"):
                out.output_tokens = chunk["usage"]["completion_tokens"]
            if out.kind == "disconnect" and chunks >= 2:
                out.clean = True  # the client leaves here, as a closed browser tab does
                return
    out.problem = out.problem or "the stream ended without [DONE]"


class ServerProbe:
    """The server's own view: metric values from /metrics and the resident memory of its process."""

    def __init__(self, base: str, pid: int):
        self.base = base
        self.pid = pid

    def metrics(self) -> dict[str, float]:
        """Every sample as 'name{labels}' -> value (and 'name' -> the sum over its label sets)."""
        values: dict[str, float] = {}
        for line in httpx.get(self.base + "/metrics", timeout=10).text.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            key, value = line.rsplit(" ", 1)
            values[key] = float(value)
            name = key.split("{", 1)[0]
            values[name] = values.get(name, 0.0) + float(value) if name != key else float(value)
        return values

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError(f"no VmRSS for process {self.pid}")

    def idle(self) -> bool:
        m = self.metrics()
        return (m.get("vllm:kv_cache_usage_perc") == 0 and m.get("vllm:num_requests_running") == 0
                and m.get("vllm:num_requests_waiting") == 0)

    async def wait_idle(self, seconds: float = 30.0) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if await asyncio.to_thread(self.idle):
                return True
            await asyncio.sleep(0.1)
        return False
