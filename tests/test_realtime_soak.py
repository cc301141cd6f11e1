"""A short soak of /v1/realtime: many sessions from four clients at once, answered, cancelled, left mid-answer
and spoken to, on a real server with the tiny checkpoint. Pass: every session ends as its client chose,
/metrics counts every response by status as the clients saw them, no session is left open, and the engine
holds no request or KV block once idle. STEPAUDIO_RT_SOAK_SESSIONS sets the count (default 40)."""

from __future__ import annotations

import base64
import itertools
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from model_fixtures import tiny_dir  # noqa: F401  (fixture)
from server_fixtures import MODEL, metric, reference, running_server, tone, wait_idle  # noqa: F401  (fixtures)

pytest.importorskip("piper")
pytest.importorskip("websockets")
from stepaudio.realtime.client import RealtimeClient, pcm16_24k, realtime_url  # noqa: E402  (needs websockets)

SESSIONS = int(os.environ.get("STEPAUDIO_RT_SOAK_SESSIONS", "40"))
SHORT = {"schedule": "speak-first", "temperature": 1.0, "think_segment_tokens": 6, "response_segment_tokens": 6,
         "max_thinking_tokens": 12, "max_response_tokens": 12}
ENDLESS = {**SHORT, "ignore_eos": True, "max_thinking_tokens": 100000, "max_response_tokens": 100000}
TONE = pcm16_24k(tone(1.0), 16000)
KINDS = ("text", "cancel", "leave", "audio")
ANSWERED = ("completed", "incomplete")   # incomplete: the answer reached max_response_tokens
EXPECTED_STATUS = {"text": ANSWERED, "cancel": ("cancelled",), "leave": (None,), "audio": ANSWERED}


def ask(client: RealtimeClient, kind: str) -> None:
    if kind == "audio":
        client.send({"type": "input_audio_buffer.append", "audio": base64.b64encode(TONE).decode()})
        client.send({"type": "input_audio_buffer.commit"})
    else:
        client.send({"type": "conversation.item.create", "item": {
            "type": "message", "role": "user", "content": [{"type": "input_text", "text": "Tell me something."}]}})
    client.send({"type": "response.create"})


def until(client: RealtimeClient, kind: str) -> dict:
    while (event := client.recv(timeout=120))["type"] != kind:
        assert event["type"] != "error", event
    return event


def one_session(url: str, n: int) -> tuple[str, str | None]:
    """Run session n; (its kind, the status its response.done gave, None where the client left first)."""
    kind = KINDS[n % len(KINDS)]
    with RealtimeClient(url, timeout=120) as client:
        assert client.recv()["type"] == "session.created"
        client.configure(seed=n, **(ENDLESS if kind in ("cancel", "leave") else SHORT))
        ask(client, kind)
        if kind in ("cancel", "leave"):
            until(client, "response.output_audio.delta")     # mid-answer
            if kind == "leave":
                return kind, None
            client.send({"type": "response.cancel"})
        done = until(client, "response.done")["response"]
        if kind == "cancel":
            assert done["status_details"]["reason"] == "client_cancelled"
        return kind, done["status"]


def responses_by_status(base: str) -> dict[str, int]:
    families = text_string_to_metric_families(httpx.get(base + "/metrics").text)
    return {sample.labels["status"]: int(sample.value) for family in families
            if family.name == "stepaudio:realtime_responses" for sample in family.samples
            if sample.name.endswith("_total")}


def test_many_sessions_end_cleanly_and_leave_nothing_behind(reference) -> None:  # noqa: F811
    with running_server(reference, engine_options={"max_num_seqs": 8}) as base:
        url = realtime_url(base + "/v1", MODEL)
        with ThreadPoolExecutor(4) as pool:
            outcomes = list(pool.map(one_session, itertools.repeat(url), range(SESSIONS)))
        for kind, status in outcomes:
            assert status in EXPECTED_STATUS[kind], (kind, status)
        seen = Counter(status for _, status in outcomes)
        seen["cancelled"] += seen.pop(None, 0)               # a session left mid-answer cancels its response
        wait_idle(base, lambda: metric(base, "stepaudio:realtime_sessions") == 0   # the last sessions close
                  and sum(responses_by_status(base).values()) == SESSIONS, seconds=30)
        assert responses_by_status(base) == dict(seen)
        assert metric(base, "stepaudio:realtime_sessions") == 0
        assert metric(base, "vllm:num_requests_running") == 0 and metric(base, "vllm:num_requests_waiting") == 0
        assert metric(base, "vllm:kv_cache_usage_perc") == 0
