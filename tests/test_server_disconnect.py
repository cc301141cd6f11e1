"""A client that leaves aborts its request and frees its KV blocks; a full queue answers 429."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from model_fixtures import tiny_dir  # noqa: F401  (fixture)
from server_fixtures import MODEL, metric, reference, running_server  # noqa: F401

# Long enough that it cannot finish while the test watches it: the tiny model's whole context.
ENDLESS = {"model": MODEL, "messages": [{"role": "user", "content": "Go on forever."}], "max_tokens": 4000,
           "ignore_eos": True, "temperature": 0}


def wait_until(condition, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def idle(url: str) -> bool:
    return (metric(url, "vllm:kv_cache_usage_perc") == 0 and metric(url, "vllm:num_requests_running") == 0
            and metric(url, "vllm:num_requests_waiting") == 0)


@pytest.fixture(scope="module")
def url(reference):  # noqa: F811
    with running_server(reference) as base:
        yield base


def test_disconnect_mid_stream_aborts_and_frees_kv(url):
    finished, aborted = metric(url, "vllm:request_success_total"), metric(url, "stepaudio:requests_aborted_total")
    with httpx.stream("POST", url + "/v1/chat/completions", json={**ENDLESS, "stream": True}, timeout=30) as stream:
        lines = stream.iter_lines()
        data = [ln for ln in (next(lines) for _ in range(12)) if ln.startswith("data:")]
        assert len(data) >= 4
        assert metric(url, "vllm:kv_cache_usage_perc") > 0 and metric(url, "vllm:num_requests_running") == 1
    wait_until(lambda: idle(url))
    assert metric(url, "vllm:request_success_total") == finished  # aborted, not run to its end
    assert metric(url, "stepaudio:requests_aborted_total") == aborted + 1


def test_disconnect_while_waiting_for_a_whole_response_aborts_it(url):
    finished, aborted = metric(url, "vllm:request_success_total"), metric(url, "stepaudio:requests_aborted_total")
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(url + "/v1/chat/completions", json=ENDLESS, timeout=httpx.Timeout(30, read=0.5))
    wait_until(lambda: idle(url))
    assert metric(url, "vllm:request_success_total") == finished
    assert metric(url, "stepaudio:requests_aborted_total") == aborted + 1


def test_full_queue_answers_429_with_retry_after(reference):  # noqa: F811
    with running_server(reference, engine_options={"max_num_seqs": 1}, max_queue=0) as base:
        client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)
        with httpx.stream("POST", base + "/v1/chat/completions", json={**ENDLESS, "stream": True},
                          timeout=30) as busy:
            lines = busy.iter_lines()  # kept: dropping the iterator would close the connection
            next(lines)
            refused = httpx.post(base + "/v1/chat/completions", json={**ENDLESS, "max_tokens": 2})
            assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
            assert refused.json()["error"]["type"] == "rate_limit_error"
            with pytest.raises(openai.RateLimitError):
                client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
        wait_until(lambda: idle(base))
        # The slot is free again, also after a refused request.
        assert httpx.post(base + "/v1/chat/completions", json={**ENDLESS, "temperature": -1}).status_code == 400
        ok = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=3)
        assert ok.usage.completion_tokens >= 1
        assert metric(base, 'stepaudio:http_responses_total{route="/v1/chat/completions",status="429"}') == 2
