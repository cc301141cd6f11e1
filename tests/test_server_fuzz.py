"""Generated requests: schemathesis from the server's own OpenAPI schema, and hypothesis-made audio payloads.

Pass: no 5xx (nor a 5xx error event inside a 200 stream), every error an OpenAI-style body, and the server
still answers afterwards. Bounded by example counts (about a minute on a 2-core CPU); raise
STEPAUDIO_FUZZ_EXAMPLES for a longer run (docs/RELIABILITY.md).
"""

from __future__ import annotations

import io
import json
import os
import struct

import httpx
import numpy as np
import pytest
import schemathesis
from schemathesis import GenerationMode
import soundfile as sf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from model_fixtures import tiny_dir  # noqa: F401  (fixture)
from server_fixtures import MODEL, b64, reference, running_server  # noqa: F401

EXAMPLES = int(os.environ.get("STEPAUDIO_FUZZ_EXAMPLES", "25"))
LIMITS = {"max_body_bytes": 2**20, "max_audio_seconds": 30.0, "max_audio_parts": 8}
ERROR_FIELDS = {"message", "type", "param", "code"}
FUZZ_SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                         suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def url(reference):  # noqa: F811
    with running_server(reference, engine_options={"max_model_len": 256, "max_num_seqs": 4}, **LIMITS) as base:
        yield base
        # After everything generated here the server still serves a plain request.
        ok = httpx.post(base + "/v1/chat/completions", timeout=30, json={
            "model": MODEL, "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]})
        assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] >= 1


def assert_answer_is_clean(status: int, body: bytes, content_type: str) -> None:
    """No 5xx; an error is {"error": {message, type, param, code}}; a stream carries no 5xx error event."""
    assert status < 500, body[:500]
    if status >= 400:
        error = json.loads(body)["error"]
        assert set(error) == ERROR_FIELDS and error["message"], body[:500]
    elif content_type.startswith("text/event-stream"):
        for line in body.decode().splitlines():
            if line.startswith("data:") and '"error"' in line:
                assert json.loads(line[5:])["status_code"] < 500, line


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_every_route_answers_generated_requests_cleanly(url, mode):
    # Strategies per operation, driven by hypothesis here: schemathesis' pytest plugin predates pytest 9.
    operations = [result.ok() for result in schemathesis.openapi.from_url(url + "/openapi.json").get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/chat/completions", "/tokenize", "/v1/models", "/health"}
    for operation in operations:
        if mode is GenerationMode.NEGATIVE and operation.method != "post":
            continue  # a GET without parameters has no invalid form
        @given(case=operation.as_strategy(generation_mode=mode))
        @FUZZ_SETTINGS
        def answers_cleanly(case):
            response = case.call(base_url=url, timeout=60)
            content_type = (response.headers.get("content-type") or [""])[0]  # schemathesis: name -> values
            assert_answer_is_clean(response.status_code, response.content, content_type)

        answers_cleanly()


def test_the_schema_describes_the_request_bodies(url):
    spec = httpx.get(url + "/openapi.json").json()
    body = spec["paths"]["/v1/chat/completions"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    chat = spec["components"]["schemas"][body["$ref"].rsplit("/", 1)[1]]
    assert "messages" in chat["required"] and "max_tokens" in chat["properties"]
    assert "requestBody" in spec["paths"]["/tokenize"]["post"]


# ---- audio payloads -------------------------------------------------------------------------------

def wav_header(sample_rate: int, channels: int, bits: int, fmt: int, data_len: int) -> bytes:
    """A RIFF/WAVE header whose fields may say anything, valid or not."""
    block = channels * max(bits, 8) // 8
    fmt_chunk = struct.pack("<HHIIHH", fmt, channels, sample_rate, (sample_rate * block) & 0xFFFFFFFF,
                            block & 0xFFFF, bits)
    return (b"RIFF" + struct.pack("<I", (36 + data_len) & 0xFFFFFFFF) + b"WAVEfmt " + struct.pack("<I", 16)
            + fmt_chunk + b"data" + struct.pack("<I", data_len & 0xFFFFFFFF))


def encoded(wav: np.ndarray, sr: int, fmt: str, subtype: str | None = None) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, wav, sr, format=fmt, subtype=subtype)
    return buf.getvalue()


header_fields = st.tuples(
    st.one_of(st.sampled_from([0, 1, 999, 1000, 8000, 16000, 768000, 768001, 2**31 - 1, 2**32 - 1]),
              st.integers(0, 2**32 - 1)),
    st.sampled_from([0, 1, 2, 8, 255, 65535]), st.sampled_from([0, 1, 8, 16, 24, 32, 64, 65535]),
    st.sampled_from([0, 1, 3, 6, 7, 0xFFFE, 0x1234]), st.integers(0, 2**32 - 1))
raw_with_header = st.builds(lambda h, body: wav_header(*h) + body, header_fields, st.binary(max_size=4000))
magic_then_noise = st.builds(lambda magic, body: magic + body,
                             st.sampled_from([b"RIFF", b"fLaC", b"OggS", b"ID3\x03", b"\xff\xfb", b"\x1aE\xdf\xa3",
                                              b"\x00\x00\x00\x20ftypM4A "]), st.binary(max_size=4000))
special_floats = st.lists(st.sampled_from([np.nan, np.inf, -np.inf, 0.0, 1e38, -1e38, 1.0]), min_size=1,
                          max_size=400)
float_wav = st.builds(lambda values, sr: encoded(np.asarray(values, np.float32), sr, "WAV", "FLOAT"),
                      special_floats, st.sampled_from([8000, 16000, 48000]))
short_tone = (0.3 * np.sin(np.arange(4000) / 3)).astype(np.float32)
truncated = st.builds(lambda fmt, cut: encoded(short_tone, 16000, fmt)[:cut], st.sampled_from(["WAV", "FLAC", "OGG"]),
                      st.integers(0, 3000))
payloads = st.one_of(raw_with_header, magic_then_noise, float_wav, truncated)
formats = st.sampled_from(["wav", "mp3", "flac", "ogg", "webm", "", "exe"])


def post_parts(url: str, parts: list[dict]) -> httpx.Response:
    body = {"model": MODEL, "max_tokens": 1, "messages": [{"role": "user", "content": parts}]}
    return httpx.post(url + "/v1/chat/completions", json=body, timeout=60)


def assert_clean(response: httpx.Response) -> None:
    assert response.status_code in (200, 400, 413), response.text[:500]
    assert_answer_is_clean(response.status_code, response.content, response.headers.get("content-type", ""))


@given(data=payloads, fmt=formats)
@FUZZ_SETTINGS
def test_generated_audio_bytes_get_an_answer_or_a_clean_400(url, data, fmt):
    assert_clean(post_parts(url, [{"type": "input_audio", "input_audio": {"data": b64(data), "format": fmt}}]))


@given(count=st.integers(1, LIMITS["max_audio_parts"] + 3), samples=st.integers(0, 40), as_url=st.booleans())
@FUZZ_SETTINGS
def test_many_tiny_audio_parts(url, count, samples, as_url):
    data = b64(encoded(short_tone[:samples], 16000, "WAV")) if samples else ""
    part = ({"type": "audio_url", "audio_url": {"url": f"data:audio/wav;base64,{data}"}} if as_url
            else {"type": "input_audio", "input_audio": {"data": data, "format": "wav"}})
    response = post_parts(url, [{"type": "text", "text": "how many?"}] + [part] * count)
    assert_clean(response)
    if count > LIMITS["max_audio_parts"]:
        assert response.json()["error"]["code"] == "too_many_audio_parts"
