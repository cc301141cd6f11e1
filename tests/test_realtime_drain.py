"""SIGTERM with realtime sessions open, on a real `stepaudio serve` process with the tiny checkpoint.

The drain must reach the WebSocket too: an answer in flight finishes, one that cannot finish in time is
cancelled with a reason, every open session then gets an error event and a 1001 close, a new connection is
refused with 503 and an OpenAI error body, and the process exits."""

from __future__ import annotations

import json
import signal
import sys
import threading

import pytest

from model_fixtures import tiny_dir  # noqa: F401  (fixture)
from server_fixtures import MODEL, free_port, serving_process

pytest.importorskip("piper")
websockets = pytest.importorskip("websockets")
from stepaudio.realtime.client import RealtimeClient, realtime_url  # noqa: E402  (needs websockets)

SHORT = {"schedule": "no-think", "temperature": 0.0, "response_segment_tokens": 6, "max_response_tokens": 8}
# ignore_eos: a sampled end-of-text must not finish it before --shutdown-timeout (it did on a faster machine).
ENDLESS = {"schedule": "no-think", "temperature": 1.0, "seed": 3, "ignore_eos": True, "max_response_tokens": 100000}


def open_session(url: str, **stepaudio) -> RealtimeClient:
    client = RealtimeClient(url, timeout=60)
    assert client.recv()["type"] == "session.created"
    if stepaudio:
        client.configure(**stepaudio)
    return client


def ask_in_text(client: RealtimeClient, text: str) -> None:
    client.send({"type": "conversation.item.create",
                 "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}})
    client.send({"type": "response.create"})
    while client.recv()["type"] != "response.created":
        pass


def until_closed(client: RealtimeClient) -> tuple[list[dict], int]:
    """Every event until the server closes the socket, and the close code it sent."""
    events = []
    with pytest.raises(websockets.exceptions.ConnectionClosed) as closed:
        while True:
            events.append(client.recv())
    return events, closed.value.rcvd.code


def test_sigterm_drains_realtime_sessions(tiny_dir, tmp_path):  # noqa: F811
    port = free_port()
    argv = [sys.executable, "-m", "stepaudio", "serve", str(tiny_dir), "--port", str(port), "--served-model-name",
            MODEL, "--max-num-seqs", "4", "--kv-cache-memory-gb", "0.05", "--shutdown-timeout", "6"]
    with serving_process(argv, port, tmp_path / "serve.log") as server:
        url = realtime_url(f"http://127.0.0.1:{port}/v1", MODEL)
        idle, short, endless = open_session(url), open_session(url, **SHORT), open_session(url, **ENDLESS)
        ask_in_text(endless, "Think about this for a long time.")
        ask_in_text(short, "Say hello.")
        server.send_signal(signal.SIGTERM)
        results: dict[str, tuple[list[dict], int]] = {}
        readers = [threading.Thread(target=lambda n=name, c=client: results.__setitem__(n, until_closed(c)))
                   for name, client in (("idle", idle), ("short", short), ("endless", endless))]
        for reader in readers:
            reader.start()
        refused = None
        for _ in range(50):  # the signal reaches the server's loop within a moment
            try:
                RealtimeClient(url, timeout=10).ws.close()
            except websockets.exceptions.InvalidStatus as e:
                refused = e.response
                break
        for reader in readers:
            reader.join(60)
        assert server.wait(30) in (0, -signal.SIGTERM)

    assert refused is not None and refused.status_code == 503
    assert json.loads(refused.body)["error"]["code"] == "server_shutting_down"
    for name, (events, code) in results.items():
        assert code == 1001, name
        assert events[-1]["type"] == "error" and events[-1]["error"]["code"] == "server_shutting_down", name
    done = {name: [e["response"] for e in events if e["type"] == "response.done"] for name, (events, _) in
            results.items()}
    assert done["idle"] == []
    assert [r["status"] for r in done["short"]] in (["completed"], ["incomplete"])  # ended or cut at 8 tokens
    assert [(r["status"], r["status_details"]["reason"]) for r in done["endless"]] == \
        [("cancelled", "server_shutting_down")]
    assert "SIGTERM: refusing new requests" in (tmp_path / "serve.log").read_text()
