"""Generated realtime events (hypothesis) against /v1/realtime on a real server with the tiny checkpoint.

Each example opens a session, sends a few generated frames (events of every client type with fields near
and far from valid, non-JSON text, binary frames), cancels any answer they started, and then probes the
session. Pass: no `server_error` event (an internal error or an engine failure means an input got past
the checks), every error event has OpenAI's fields, the session still answers the probe, and at the end the
engine holds no request or KV block and the server still serves. Bounded by example count; raise
STEPAUDIO_FUZZ_EXAMPLES for a longer run (docs/RELIABILITY.md).
"""

from __future__ import annotations

import base64
import json
import os

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from model_fixtures import tiny_dir  # noqa: F401  (fixture)
from server_fixtures import MODEL, reference, running_server, wait_idle  # noqa: F401  (fixtures)

pytest.importorskip("piper")
pytest.importorskip("websockets")
from stepaudio.realtime.client import RealtimeClient, realtime_url  # noqa: E402  (needs websockets)

EXAMPLES = int(os.environ.get("STEPAUDIO_FUZZ_EXAMPLES", "30"))
FUZZ_SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                         suppress_health_check=list(HealthCheck))
SMALL = {"max_thinking_tokens": 8, "max_response_tokens": 8, "think_segment_tokens": 4,
         "response_segment_tokens": 4}
PROBE = "probe-after-the-generated-frames"
ERROR_FIELDS = {"type", "code", "message", "param", "event_id"}

scalar = st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=12)
anything = scalar | st.recursive(   # scalars as often as containers: they are what a type check misses
    scalar, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6)
pcm_base64 = st.binary(max_size=9600).map(lambda b: base64.b64encode(b).decode())
counts = st.integers(-3, 40) | st.integers(-2**70, 2**70) | anything


def near(fields: dict[str, st.SearchStrategy]) -> st.SearchStrategy:
    """An object holding any subset of `fields`, or (rarely) any JSON value at all."""
    return st.fixed_dictionaries({}, optional=fields) | anything


turn_detection = st.none() | near({
    "type": st.sampled_from(["server_vad", "semantic_vad"]) | anything, "threshold": st.floats() | anything,
    "silence_duration_ms": counts, "prefix_padding_ms": counts, "create_response": anything,
    "interrupt_response": anything})
audio_format = st.sampled_from(["pcm16", {"type": "audio/pcm", "rate": 24000}, {"type": "audio/pcm", "rate": 8000},
                                "g711_ulaw"]) | anything
knobs = near({"schedule": st.sampled_from(["speak-first", "think-first", "think-then-speak", "no-think"]) | anything,
              "think_segment_tokens": counts, "response_segment_tokens": counts, "max_thinking_tokens": counts,
              "max_response_tokens": counts, "temperature": st.floats() | anything, "seed": counts})
session = near({"type": st.just("realtime"), "instructions": st.text(max_size=20) | anything,
                "audio": near({"input": near({"format": audio_format, "turn_detection": turn_detection}),
                               "output": near({"format": audio_format, "voice": anything})}),
                "turn_detection": turn_detection, "input_audio_format": audio_format,
                "max_output_tokens": counts | st.just("inf"), "temperature": anything, "stepaudio": knobs})
content_part = near({"type": st.sampled_from(["input_text", "text", "output_text", "input_audio", "image"]) | anything,
                     "text": st.text(max_size=20) | anything, "audio": pcm_base64 | anything})
item = near({"type": st.just("message") | anything, "role": st.sampled_from(["user", "assistant", "system"]) | anything,
             "id": st.text(max_size=8) | anything, "content": st.lists(content_part, max_size=3) | anything})
EVENTS = {
    "session.update": {"session": session},
    "input_audio_buffer.append": {"audio": pcm_base64 | st.text(max_size=12) | anything},
    "input_audio_buffer.commit": {},
    "input_audio_buffer.clear": {},
    "conversation.item.create": {"item": item, "previous_item_id": anything},
    "conversation.item.delete": {"item_id": st.text(max_size=8) | anything},
    "conversation.item.truncate": {"item_id": st.text(max_size=8) | anything, "content_index": counts,
                                   "audio_end_ms": counts},
    "response.create": {"response": near({"instructions": anything, "max_output_tokens": counts, "stepaudio": knobs})},
    "response.cancel": {},
    "output_audio_buffer.clear": {},
}
# Every client event whole and valid; `one_field_wrong` then replaces one of its values (a leaf or a whole
# sub-object) with anything: the type checks a handler misses show up within a few examples.
VALID = [
    {"type": "session.update", "session": {
        "type": "realtime", "instructions": "Be brief.", "max_output_tokens": 8, "temperature": 0.5,
        "audio": {"input": {"format": {"type": "audio/pcm", "rate": 24000},
                            "turn_detection": {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300,
                                               "silence_duration_ms": 500, "create_response": True,
                                               "interrupt_response": True}},
                  "output": {"format": "pcm16", "voice": "joe"}},
        "stepaudio": {"schedule": "no-think", "max_thinking_tokens": 8, "max_response_tokens": 8, "seed": 1,
                      "think_segment_tokens": 4, "response_segment_tokens": 4, "temperature": 1.0,
                      "ignore_eos": False}}},
    {"type": "input_audio_buffer.append", "audio": base64.b64encode(bytes(4800)).decode()},
    {"type": "conversation.item.create", "item": {
        "type": "message", "role": "user", "id": "item_a",
        "content": [{"type": "input_text", "text": "Hello."},
                    {"type": "input_audio", "audio": base64.b64encode(bytes(4800)).decode()}]}},
    {"type": "conversation.item.truncate", "item_id": "item_a", "content_index": 0, "audio_end_ms": 100},
    {"type": "conversation.item.delete", "item_id": "item_a"},
    {"type": "response.create", "response": {"instructions": "Answer.", "max_output_tokens": 8,
                                             "stepaudio": {"schedule": "no-think", "max_response_tokens": 8}}},
]


def paths(value, prefix=()):
    """Every position in a JSON value: each key of each object and each index of each list."""
    children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in children:
        yield prefix + (key,)
        yield from paths(child, prefix + (key,))


def replaced(value, path, new):
    if not path:
        return new
    copy = dict(value) if isinstance(value, dict) else list(value)
    copy[path[0]] = replaced(value[path[0]], path[1:], new)
    return copy


one_field_wrong = st.sampled_from(VALID).flatmap(
    lambda valid: st.tuples(st.sampled_from([p for p in paths(valid) if p != ("type",)]), anything).map(
        lambda change: replaced(valid, *change)))
event = one_field_wrong | st.one_of(*[
    st.fixed_dictionaries({"type": st.just(kind)}, optional={"event_id": anything, **fields})
    for kind, fields in EVENTS.items()]) | near({"type": anything})
frame = event.map(json.dumps) | st.text(max_size=40) | st.binary(max_size=40)


@pytest.fixture(scope="module")
def url(reference):  # noqa: F811
    with running_server(reference, engine_options={"max_model_len": 512, "max_num_seqs": 4}) as base:
        yield base
        wait_idle(base)
        assert httpx.get(base + "/health").status_code == 200


def assert_clean(event: dict) -> None:
    if event["type"] == "error":
        error = event["error"]
        assert set(error) == ERROR_FIELDS and error["message"], event
        assert error["type"] != "server_error", event


@FUZZ_SETTINGS
@given(frames=st.lists(frame, min_size=1, max_size=6))
def test_generated_events_get_clean_answers_and_the_session_survives(url, frames):
    with RealtimeClient(realtime_url(url + "/v1", MODEL), timeout=60) as client:
        assert client.recv()["type"] == "session.created"
        client.configure(**SMALL)
        for raw in frames:
            client.ws.send(raw)
        client.send({"type": "response.cancel"})  # whatever they started (an error event if nothing)
        # The probe's answer is the last one (events are handled in order) and only it carries this id.
        client.send({"type": "stepaudio.probe", "event_id": PROBE})
        while (answer := client.recv())["type"] != "error" or answer["error"]["event_id"] != PROBE:
            assert_clean(answer)
        assert answer["error"]["code"] == "invalid_event"
