"""Every bad request gets an OpenAI-style 4xx error body, and the server keeps serving afterwards."""

from __future__ import annotations

import json
import random

import httpx
import numpy as np
import openai
import pytest

from model_fixtures import tiny_dir  # noqa: F401  (fixture)
from server_fixtures import MODEL, audio_part, b64, reference, running_server, tone, wav_bytes  # noqa: F401

LIMITS = {"max_body_bytes": 2 * 2**20, "max_audio_seconds": 60.0, "max_audio_parts": 4}


@pytest.fixture(scope="module")
def url(reference, tmp_path_factory):  # noqa: F811
    media = tmp_path_factory.mktemp("allowed")
    with running_server(reference, engine_options={"max_model_len": 512, "max_num_seqs": 4},
                        allowed_local_media_path=media, **LIMITS) as base:
        yield base


def post(url: str, body, path: str = "/v1/chat/completions", **kwargs) -> httpx.Response:
    if isinstance(body, (dict, list)):
        return httpx.post(url + path, json=body, timeout=30, **kwargs)
    return httpx.post(url + path, content=body, headers={"content-type": "application/json"}, timeout=30, **kwargs)


def user(*parts) -> dict:
    return {"model": MODEL, "max_tokens": 2, "messages": [{"role": "user", "content": list(parts)}]}


def chat(**fields) -> dict:
    return {"model": MODEL, "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}], **fields}


def assert_error(response: httpx.Response, status: int, code: str | None = None, param: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["type"] == {401: "authentication_error", 429: "rate_limit_error"}.get(status, "invalid_request_error")
    if code is not None:
        assert error["code"] == code, error
    if param is not None:
        assert error["param"] == param, error
    return error


@pytest.fixture(autouse=True)
def still_serving(url):
    """After every test here the server is healthy and answers a normal request."""
    yield
    assert httpx.get(url + "/health").status_code == 200
    ok = post(url, chat())
    assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] >= 1


def nan_wav() -> bytes:
    wav = tone(1.0)
    wav[100] = np.nan
    return wav_bytes(wav, subtype="FLOAT")


BAD_AUDIO = {
    "bad base64": audio_part(b"")["input_audio"] | {"data": "not base64!"},
    "bytes that are not audio": {"data": b64(b"this is plain text, not a sound file" * 20), "format": "wav"},
    "zero bytes": {"data": "", "format": "wav"},
    "zero samples": {"data": b64(wav_bytes(np.zeros(0, np.float32))), "format": "wav"},
    "NaN samples": {"data": b64(nan_wav()), "format": "wav"},
}


@pytest.mark.parametrize("case", list(BAD_AUDIO))
def test_bad_audio_is_400(url, case):
    response = post(url, user({"type": "input_audio", "input_audio": BAD_AUDIO[case]}))
    assert_error(response, 400, "invalid_audio")


def test_audio_longer_than_allowed(url):
    long = {"data": b64(wav_bytes(tone(61.0, sr=8000), sr=8000)), "format": "wav"}
    error = assert_error(post(url, user({"type": "input_audio", "input_audio": long})), 400, "audio_too_long")
    assert "61.0 s" in error["message"]


def test_thinking_off_counts_the_tokens_that_close_the_think_block(url):
    # A prompt one token short of max_model_len (512) fits with thinking on; with thinking off the engine
    # appends "\n</think>\n", so the server must refuse it up front with a 400, streamed or not.
    def messages(n: int) -> list[dict]:
        return [{"role": "user", "content": "a" + " a" * n}]

    def count(n: int) -> int:
        return post(url, {"messages": messages(n)}, path="/tokenize").json()["count"]

    n = 511 - count(0)
    while count(n) < 511:
        n += 1
    assert count(n) == 511
    assert post(url, chat(messages=messages(n), max_tokens=1)).status_code == 200
    for stream in (False, True):
        assert_error(post(url, chat(messages=messages(n), thinking="off", stream=stream)), 400,
                     "context_length_exceeded")


def test_too_many_audio_parts(url):
    parts = [audio_part(wav_bytes(tone(0.5)))] * 5
    assert_error(post(url, user(*parts)), 400, "too_many_audio_parts")


def test_body_over_the_size_cap_is_413(url):
    big = {"data": b64(b"\0" * (2 * 2**20)), "format": "wav"}
    assert_error(post(url, user({"type": "input_audio", "input_audio": big})), 413, "request_too_large")


def test_prompt_over_max_model_len(url):
    error = assert_error(post(url, chat(messages=[{"role": "user", "content": "word " * 600}])), 400,
                         "context_length_exceeded")
    assert "maximum context length is 512 tokens" in error["message"]


def test_unknown_model_is_404(url):
    assert_error(post(url, chat(model="gpt-4o")), 404, "model_not_found", "model")


MALFORMED = {
    "not JSON": b"{not json",
    "NaN literal": b'{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}',
    "unpaired surrogate": b'{"messages": [{"role": "user", "content": "a\\ud800b"}]}',
    "invalid UTF-8": b'{"messages": [{"role": "user", "content": "\xff\xfe"}]}',
    "deep nesting": b"[" * 100000 + b"]" * 100000,
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_json(url, case):
    assert_error(post(url, MALFORMED[case]), 400, "invalid_json")


INVALID = {
    "empty messages": chat(messages=[]),
    "no messages": {"model": MODEL},
    "a list, not an object": [1, 2],
    "message without role": chat(messages=[{"content": "hi"}]),
    "image part": user({"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}),
    "negative temperature": chat(temperature=-0.5),
    "top_p above 1": chat(top_p=1.5),
    "n below 1": chat(n=0),
    "n above max_num_seqs": chat(n=5),
    "max_tokens 0": chat(max_tokens=0),
    "min_p above 1": chat(min_p=2.0),
    "presence_penalty out of range": chat(presence_penalty=5),
    "repetition_penalty 0": chat(repetition_penalty=0),
    "top_logprobs without logprobs": chat(top_logprobs=2),
    "top_logprobs above 20": chat(logprobs=True, top_logprobs=50),
    "seed beyond 64 bits": chat(seed=2**70),
    "empty stop string": chat(stop=[""]),
    "unknown thinking mode": chat(thinking="maybe"),
    "string stop token id": chat(stop_token_ids=["x"]),
    "both prefill flags": chat(add_generation_prompt=True, continue_final_message=True),
    "placeholder without audio": chat(messages=[{"role": "user", "content": "<audio_patch> hi"}]),
    "tool_choice required": chat(tools=[{"type": "function", "function": {"name": "f"}}], tool_choice="required"),
    "json response_format": chat(response_format={"type": "json_object"}),
    "ftp audio URL": user({"type": "audio_url", "audio_url": {"url": "ftp://example.com/a.wav"}}),
    "stream with a bad value": chat(stream=True, temperature=-1),
}


@pytest.mark.parametrize("case", list(INVALID))
def test_invalid_request_is_400(url, case):
    assert_error(post(url, INVALID[case]), 400)


@pytest.mark.parametrize(("field", "value", "param"), [
    ("temperature", -1, "temperature"), ("top_p", 2, "top_p"), ("n", 0, "n"),
    ("stream_options", {"include_usage": "maybe"}, "stream_options.include_usage"),
    ("messages", [{"role": "user", "content": [{"type": "text"}]}], "messages[0].content[0].text"),
])
def test_bad_values_name_the_parameter(url, field, value, param):
    assert_error(post(url, chat(**{field: value})), 400, "invalid_value", param)


def test_media_outside_the_policy(url, tmp_path):
    outside = tmp_path / "secret.wav"
    outside.write_bytes(wav_bytes(tone(1.0)))
    for target in (f"file://{outside}", f"file://{outside.parent}/../{outside.parent.name}/secret.wav",
                   "http://127.0.0.1:9/clip.wav"):
        response = post(url, user({"type": "audio_url", "audio_url": {"url": target}}))
        assert_error(response, 400, "media_not_allowed")


def test_the_openai_client_sees_typed_errors(url):
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], temperature=-1)
    assert bad.value.code == "invalid_value" and bad.value.param == "temperature"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])


def test_huge_max_tokens_is_clamped_not_refused(url):
    response = post(url, chat(max_tokens=10**30, ignore_eos=True, temperature=0))
    assert response.status_code == 200
    usage = response.json()["usage"]
    assert usage["prompt_tokens"] + usage["completion_tokens"] == 512


def test_unknown_routes_and_methods_are_json_errors(url):
    assert_error(httpx.get(url + "/v1/nope"), 404)
    assert httpx.get(url + "/v1/chat/completions").status_code == 405
    assert httpx.get(url + "/v1/chat/completions").json()["error"]["type"] == "invalid_request_error"


def test_tokenize_refuses_bad_input(url):
    assert_error(post(url, {"prompt": "a", "messages": [{"role": "user", "content": "b"}]}, path="/tokenize"), 400)
    assert_error(post(url, {"prompt": "a", "model": "other"}, path="/tokenize"), 404)


def test_random_garbage_never_gives_a_server_error(url):
    """Mutated requests: wrong types in every field, random bytes. Any answer is fine but a 5xx."""
    rng = random.Random(0)
    base = chat(stream=False)
    junk = [None, -1, 0, 1.5, 10**20, "", "x", [], {}, [None], {"a": 1}, True, "\u0000", -1e308]
    keys = list(base) + ["stop", "stop_token_ids", "seed", "n", "top_k", "logprobs", "tools", "stream_options",
                         "max_thinking_tokens", "response_format", "tool_choice", "min_tokens"]
    for _ in range(60):
        body = json.loads(json.dumps(base))
        for key in rng.sample(keys, 2):
            body[key] = rng.choice(junk)
        response = post(url, body)
        assert response.status_code < 500, (body, response.text)
    for _ in range(10):
        response = post(url, bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 300))))
        assert response.status_code == 400


def test_api_key(reference):  # noqa: F811
    with running_server(reference, api_key="secret") as base:
        assert_error(post(base, chat()), 401, "invalid_api_key")
        assert_error(post(base, chat(), headers={"Authorization": "Bearer wrong"}), 401)
        assert_error(httpx.get(base + "/v1/models"), 401)
        assert httpx.get(base + "/health").status_code == 200 and httpx.get(base + "/metrics").status_code == 200
        client = openai.OpenAI(base_url=base + "/v1", api_key="secret", max_retries=0)
        assert client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                              max_tokens=2).usage.completion_tokens >= 1
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=base + "/v1", api_key="wrong", max_retries=0).models.list()
