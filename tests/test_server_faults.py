"""Faults injected into a running server: a failing engine step, one request's failure inside a batch, a client
gone during prefill, SIGTERM while streaming. Each ends in clean errors for whom it hit, nothing for the
others, every KV block back, and a server that goes on serving (or, for SIGTERM, drains and exits)."""

from __future__ import annotations

import json
import signal
import socket
import sys
import threading
import time

import httpx
import pytest

from model_fixtures import tiny_dir  # noqa: F401  (fixture)
from server_fixtures import MODEL, free_port, metric, reference, running_server, serving_process  # noqa: F401
from stepaudio.engine.runner import ModelRunner
from stepaudio.engine.text_state import SequenceText

CHAT = "/v1/chat/completions"
POISONED_SEED = 666  # the request whose detokenizing is made to fail


def body(max_tokens: int = 20, stream: bool = True, **fields) -> dict:
    usage = {"stream_options": {"include_usage": True}} if stream else {}
    return {"model": MODEL, "messages": [{"role": "user", "content": "Tell me a story."}], "max_tokens": max_tokens,
            "ignore_eos": True, "temperature": 0, "stream": stream, **usage, **fields}


def stream_events(url: str, payload: dict) -> list[dict | str]:
    """Every data event of a streamed request: parsed JSON, or the string [DONE]."""
    events: list[dict | str] = []
    with httpx.stream("POST", url + CHAT, json=payload, timeout=60) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if line.startswith("data:"):
                data = line[5:].strip()
                events.append(data if data == "[DONE]" else json.loads(data))
    return events


def streamed_tokens(events: list) -> int:
    """The completion tokens of the usage chunk (0 if the stream ended without one)."""
    return sum(e["usage"]["completion_tokens"] for e in events if isinstance(e, dict) and e.get("usage"))


def error_events(events: list) -> list[dict]:
    return [e for e in events if isinstance(e, dict) and "error" in e]


def idle(url: str) -> bool:
    return (metric(url, "vllm:kv_cache_usage_perc") == 0 and metric(url, "vllm:num_requests_running") == 0
            and metric(url, "vllm:num_requests_waiting") == 0)


def wait_until(condition, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def in_threads(*calls):
    """Run the calls at once; their results in order (an exception is re-raised here)."""
    results: list = [None] * len(calls)

    def run(i, call):
        try:
            results[i] = call()
        except BaseException as e:  # noqa: BLE001 (handed back to the test)
            results[i] = e

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return results


@pytest.fixture(scope="module")
def url(reference):  # noqa: F811
    with running_server(reference, engine_options={"max_num_seqs": 4, "max_num_batched_tokens": 8}) as base:
        yield base


def test_a_failing_engine_step_fails_the_requests_in_it_cleanly(url, monkeypatch):
    real, calls = ModelRunner.decode, []

    def decode_failing_once(self, work):
        calls.append(len(work.seqs))
        if len(calls) == 5:
            raise RuntimeError("injected fault in a decode step")
        return real(self, work)

    monkeypatch.setattr(ModelRunner, "decode", decode_failing_once)
    streamed, whole = in_threads(lambda: stream_events(url, body(60)),
                                 lambda: httpx.post(url + CHAT, json=body(60, stream=False), timeout=60))
    assert [e["error"]["code"] for e in error_events(streamed)] == ["engine_error"] and streamed[-1] == "[DONE]"
    assert whole.status_code == 500 and whole.json()["error"]["type"] == "server_error"
    wait_until(lambda: idle(url))
    monkeypatch.undo()
    after = stream_events(url, body(5))
    assert not error_events(after) and streamed_tokens(after) == 5


def test_one_request_failing_inside_a_batch_leaves_the_others_running(url, monkeypatch):
    real_init, real_add = SequenceText.__init__, SequenceText.add

    def init(self, tokenizer, params, starts_in_reasoning):
        real_init(self, tokenizer, params, starts_in_reasoning)
        self.calls_left = 3 if params.seed == POISONED_SEED else None

    def add(self, ids):
        if self.calls_left is not None:
            self.calls_left -= 1
            if self.calls_left < 0:
                raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "injected detokenizer fault")
        return real_add(self, ids)

    monkeypatch.setattr(SequenceText, "__init__", init)
    monkeypatch.setattr(SequenceText, "add", add)
    finished = metric(url, "vllm:request_success_total")
    poisoned, *healthy = in_threads(lambda: stream_events(url, body(40, seed=POISONED_SEED)),
                                    lambda: stream_events(url, body(40, seed=1)),
                                    lambda: stream_events(url, body(40, seed=2)))
    assert [e["error"]["code"] for e in error_events(poisoned)] == ["engine_error"] and poisoned[-1] == "[DONE]"
    for events in healthy:  # before the fix every request of the batch got the error
        assert not error_events(events) and streamed_tokens(events) == 40
    wait_until(lambda: idle(url))
    assert metric(url, "vllm:request_success_total") == finished + 2


def raw_post_then_close(url: str, payload: dict, wait: float) -> None:
    """Send a whole request on a bare socket and close it `wait` seconds later, before any answer."""
    host, port = url.removeprefix("http://").split(":")
    data = json.dumps(payload).encode()
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(b"POST " + CHAT.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     + f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
        time.sleep(wait)


@pytest.mark.parametrize("stream", [True, False])
def test_a_client_gone_during_prefill_is_aborted(url, stream):
    # 8-token prefill chunks over a ~3500-token prompt: prefill takes hundreds of steps; the client leaves in them.
    long_prompt = {**body(4000, stream=stream), "messages": [{"role": "user", "content": "word " * 700}]}
    aborted, finished = metric(url, "stepaudio:requests_aborted_total"), metric(url, "vllm:request_success_total")
    raw_post_then_close(url, long_prompt, wait=0.3)
    wait_until(lambda: metric(url, "stepaudio:requests_aborted_total") == aborted + 1)
    wait_until(lambda: idle(url))
    assert metric(url, "vllm:request_success_total") == finished
    after = stream_events(url, body(3))
    assert streamed_tokens(after) == 3


def test_sigterm_drains_finishes_in_flight_streams_and_refuses_new_requests(tiny_dir, tmp_path):  # noqa: F811
    port = free_port()
    argv = [sys.executable, "-m", "stepaudio", "serve", str(tiny_dir), "--port", str(port), "--served-model-name",
            MODEL, "--max-num-seqs", "4", "--kv-cache-memory-gb", "0.05", "--shutdown-timeout", "4"]
    with serving_process(argv, port, tmp_path / "serve.log") as server:
        base = f"http://127.0.0.1:{port}"
        started = threading.Event()

        def short_stream():
            events = []
            with httpx.stream("POST", base + CHAT, json=body(60), timeout=60) as response:
                for line in response.iter_lines():
                    if line.startswith("data:"):
                        started.set()
                        data = line[5:].strip()
                        events.append(data if data == "[DONE]" else json.loads(data))
                        time.sleep(0.02)  # a slow reader: the stream is still going when SIGTERM comes
            return events

        def signal_then_probe():
            started.wait(30)
            server.send_signal(signal.SIGTERM)
            time.sleep(0.3)
            return (httpx.post(base + CHAT, json=body(2, stream=False), timeout=10),
                    httpx.get(base + "/health", timeout=10))

        short, endless, (refused, health) = in_threads(short_stream, lambda: stream_events(base, body(100000)),
                                                       signal_then_probe)
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "server_shutting_down"
        assert health.status_code == 503
        assert not error_events(short) and streamed_tokens(short) == 60 and short[-1] == "[DONE]"
        # The endless one cannot finish within --shutdown-timeout: a clean 503 error event, then [DONE].
        assert [e["error"]["code"] for e in error_events(endless)] == ["server_shutting_down"]
        assert endless[-1] == "[DONE]"
        assert server.wait(20) in (0, -signal.SIGTERM)
    assert "SIGTERM: refusing new requests" in (tmp_path / "serve.log").read_text()
