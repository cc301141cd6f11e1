"""The server answers what the engine answers, through the official `openai` client and raw HTTP.

Expected tokens always come from the offline engine (LLM) on the same tiny checkpoint, never from
hard-coded strings: greedy and seeded sampling do not depend on what shares a batch.
"""

from __future__ import annotations

import json

import httpx
import pytest
from openai import OpenAI

from model_fixtures import tiny_dir  # noqa: F401  (fixture)
from server_fixtures import MODEL, audio_part, b64, metric, reference, running_server, tone, wav_bytes  # noqa: F401
from stepaudio.engine.sampling import SamplingParams


@pytest.fixture(scope="module")
def server(reference, tmp_path_factory):  # noqa: F811
    media = tmp_path_factory.mktemp("media")
    with running_server(reference, reasoning_parser="step_audio", allowed_local_media_path=media) as url:
        yield url, media


@pytest.fixture(scope="module")
def client(server) -> OpenAI:
    return OpenAI(base_url=server[0] + "/v1", api_key="unused", max_retries=0)


def expect(reference, messages, params: SamplingParams, **template):  # noqa: F811
    [result] = reference.chat([messages], params, **template)
    return result


def reasoning_of(message) -> str | None:
    return getattr(message, "reasoning_content", None)


AUDIO_QUESTION = [
    {"role": "system", "content": "You are an audio expert."},
    {"role": "user", "content": [{"type": "text", "text": "What do you hear?"},
                                 audio_part(wav_bytes(tone(3.0, 300))), audio_part(wav_bytes(tone(30.0, 500)))]},
]


def test_models_health_and_version(server, client):
    [card] = client.models.list().data
    assert card.id == MODEL and card.max_model_len == 4096
    assert httpx.get(server[0] + "/health").status_code == 200
    assert httpx.get(server[0] + "/version").json()["version"]


def test_chat_with_audio_matches_the_engine(client, reference):  # noqa: F811
    """System message, two audio parts (the 30 s one cut into 25 s + 5 s), reasoning then answer."""
    want = expect(reference, AUDIO_QUESTION, SamplingParams(temperature=0, max_tokens=14, max_thinking_tokens=5))
    got = client.chat.completions.create(model=MODEL, messages=AUDIO_QUESTION, temperature=0, max_tokens=14,
                                         extra_body={"max_thinking_tokens": 5})
    [choice] = got.choices
    completion = want.completions[0]
    assert completion.content and completion.reasoning
    assert reasoning_of(choice.message) == choice.message.reasoning == completion.reasoning
    assert choice.message.content == completion.content
    assert choice.finish_reason == completion.finish_reason == "length"
    usage = got.usage
    assert usage.prompt_tokens == want.prompt_tokens and usage.completion_tokens == 14
    assert usage.total_tokens == want.prompt_tokens + 14
    assert usage.prompt_tokens_details.audio_tokens == want.audio_tokens == 38 + 313 + 63
    assert usage.completion_tokens_details.reasoning_tokens == completion.reasoning_tokens == 5


def test_stream_sends_the_same_text_and_usage_last(client):
    options = dict(model=MODEL, messages=AUDIO_QUESTION, temperature=0, max_tokens=14,
                   extra_body={"max_thinking_tokens": 5})
    whole = client.chat.completions.create(**options)
    chunks = list(client.chat.completions.create(**options, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    reasoning = "".join(reasoning_of(d) or "" for d in deltas)
    assert all(reasoning_of(d) == d.reasoning for d in deltas if reasoning_of(d))
    assert reasoning == reasoning_of(whole.choices[0].message)
    assert "".join(d.content or "" for d in deltas) == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    *body, last = chunks
    assert last.choices == [] and last.usage == whole.usage
    assert all(c.usage is None for c in body)
    assert len({c.id for c in chunks}) == 1
    running = client.chat.completions.create(**options, stream=True,
                                             stream_options={"include_usage": True, "continuous_usage_stats": True})
    counts = [c.usage.completion_tokens for c in running if c.choices and c.choices[0].finish_reason is None
              and c.usage is not None]
    assert counts == sorted(counts) and 0 < counts[-1] < 14


def test_two_choices_follow_the_engine_child_seeds(client, reference):  # noqa: F811
    messages = [{"role": "user", "content": [{"type": "text", "text": "Describe."},
                                             audio_part(wav_bytes(tone(2.0)))]}]
    want = expect(reference, messages, SamplingParams(n=2, seed=11, temperature=1.0, max_tokens=10))
    got = client.chat.completions.create(model=MODEL, messages=messages, n=2, seed=11, temperature=1.0,
                                         max_tokens=10)
    assert [reasoning_of(c.message) for c in got.choices] == [c.reasoning for c in want.completions]
    assert got.usage.completion_tokens == 20
    stream = client.chat.completions.create(model=MODEL, messages=messages, n=2, seed=11, temperature=1.0,
                                            max_tokens=10, stream=True)
    text = {0: "", 1: ""}
    for chunk in stream:
        for c in chunk.choices:
            text[c.index] += reasoning_of(c.delta) or ""
    assert [text[0], text[1]] == [c.reasoning for c in want.completions]


def test_seed_reproduces_sampling(client, reference):  # noqa: F811
    messages = [{"role": "user", "content": "Tell me about the sound."}]

    def sample(seed):
        got = client.chat.completions.create(model=MODEL, messages=messages, temperature=1.0, top_p=0.9,
                                             seed=seed, max_tokens=12, extra_body={"top_k": 50})
        return reasoning_of(got.choices[0].message)

    first = sample(123)
    assert sample(123) == first
    assert first == expect(reference, messages, SamplingParams(temperature=1.0, top_p=0.9, top_k=50, seed=123,
                                                               max_tokens=12)).completions[0].reasoning


def test_every_sampling_field_reaches_the_engine(client, reference):  # noqa: F811
    """Audio in two turns of one conversation, and the vLLM sampling fields, as the engine takes them."""
    messages = [{"role": "user", "content": [audio_part(wav_bytes(tone(2.0, 200)))]},
                {"role": "assistant", "content": "A low tone."},
                {"role": "user", "content": [{"type": "text", "text": "And now?"}, audio_part(wav_bytes(tone(3.0)))]}]
    fields = {"temperature": 0.8, "top_p": 0.95, "top_k": 40, "min_p": 0.02, "repetition_penalty": 1.1,
              "presence_penalty": 0.5, "frequency_penalty": 0.3, "seed": 5}
    want = expect(reference, messages, SamplingParams(max_tokens=9, **fields))
    got = client.chat.completions.create(
        model=MODEL, messages=messages, max_completion_tokens=9, temperature=0.8, top_p=0.95, presence_penalty=0.5,
        frequency_penalty=0.3, seed=5, extra_body={"top_k": 40, "min_p": 0.02, "repetition_penalty": 1.1})
    assert reasoning_of(got.choices[0].message) == want.completions[0].reasoning
    assert got.usage.completion_tokens == want.completions[0].completion_tokens
    assert got.usage.prompt_tokens_details.audio_tokens == 25 + 38


def test_stop_strings_and_stop_token_ids_end_the_output(client, reference):  # noqa: F811
    messages = [{"role": "user", "content": "Count the beeps."}]
    free = expect(reference, messages, SamplingParams(temperature=0, max_tokens=16)).completions[0]
    stop = free.text[6:9]
    got = client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=16, stop=[stop])
    choice = got.choices[0]
    assert choice.finish_reason == "stop" and choice.model_extra["stop_reason"] == stop
    assert reasoning_of(choice.message) == free.text[:free.text.index(stop)]
    third = free.token_ids[2]
    got = client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=16,
                                         extra_body={"stop_token_ids": [third]})
    choice = got.choices[0]
    assert choice.finish_reason == "stop" and choice.model_extra["stop_reason"] == third
    assert got.usage.completion_tokens == 3  # the stop token is generated, not shown


def test_logprobs_are_the_engine_raw_logprobs(client, reference):  # noqa: F811
    messages = [{"role": "user", "content": "Hello"}]
    want = expect(reference, messages, SamplingParams(temperature=0, max_tokens=5, logprobs=3)).completions[0]
    got = client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=5,
                                         logprobs=True, top_logprobs=3)
    entries = got.choices[0].logprobs.content
    assert len(entries) == 5
    for entry, ref in zip(entries, want.logprobs):
        assert entry.logprob == pytest.approx(ref.logprob, abs=1e-5)
        assert [t.logprob for t in entry.top_logprobs] == pytest.approx([v for _, v in ref.top], abs=1e-5)
        assert entry.top_logprobs[0].token == entry.token  # greedy: the chosen token is the top one


def test_thinking_off_answers_without_reasoning(client, reference):  # noqa: F811
    messages = [{"role": "user", "content": "Answer directly."}]
    want = expect(reference, messages, SamplingParams(temperature=0, max_tokens=8, thinking="off")).completions[0]
    got = client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=8,
                                         extra_body={"thinking": "off"})
    message = got.choices[0].message
    assert reasoning_of(message) is None and message.content == want.content != ""
    assert got.usage.completion_tokens_details.reasoning_tokens == 0


def test_assistant_prefill_continues_the_final_message(server, client):
    """The official client's prefill (`<think>\\n`, continue_final_message) renders the generation prompt."""
    user = {"role": "user", "content": "Why is the sky blue?"}
    prefill = [user, {"role": "assistant", "content": "<think>\n"}]
    options = {"continue_final_message": True, "add_generation_prompt": False}
    plain = httpx.post(server[0] + "/tokenize", json={"messages": [user]}).json()
    continued = httpx.post(server[0] + "/tokenize", json={"messages": prefill, **options}).json()
    assert continued["tokens"] == plain["tokens"] and plain["prompt"].endswith("<|BOT|>assistant\n<think>\n")
    a = client.chat.completions.create(model=MODEL, messages=[user], temperature=0, max_tokens=8)
    b = client.chat.completions.create(model=MODEL, messages=prefill, temperature=0, max_tokens=8, extra_body=options)
    assert reasoning_of(a.choices[0].message) == reasoning_of(b.choices[0].message)


def test_every_audio_form_gives_the_same_answer(server, client):
    data = wav_bytes(tone(4.0, 350))
    (server[1] / "clip.wav").write_bytes(data)
    forms = [audio_part(data),
             {"type": "audio_url", "audio_url": {"url": f"data:audio/wav;base64,{b64(data)}"}},
             {"type": "audio_url", "audio_url": {"url": f"file://{server[1] / 'clip.wav'}"}},
             {"type": "input_audio", "input_audio": {"data": f"data:audio/wav;base64,{b64(data)}"}}]
    answers = set()
    for part in forms:
        got = client.chat.completions.create(model=MODEL, temperature=0, max_tokens=6,
                                             messages=[{"role": "user", "content": [part]}])
        assert got.usage.prompt_tokens_details.audio_tokens == 50
        answers.add(reasoning_of(got.choices[0].message))
    assert len(answers) == 1


def test_tokenize_shows_the_rendered_prompt(server, reference):  # noqa: F811
    body = {"model": MODEL, "messages": AUDIO_QUESTION, "return_token_strs": True}
    got = httpx.post(server[0] + "/tokenize", json=body).json()
    want = reference.prepare(AUDIO_QUESTION)
    assert got["tokens"] == want.token_ids and got["count"] == len(want.token_ids)
    assert got["prompt"] == want.prompt and got["audio_tokens"] == want.num_audio_tokens
    assert "".join(got["token_strs"]).count("<audio_patch>") == want.num_audio_tokens
    plain = httpx.post(server[0] + "/tokenize", json={"prompt": "hello world"}).json()
    assert plain["tokens"] == reference.tokenizer.encode("hello world") and plain["audio_tokens"] == 0


TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city.",
                                            "parameters": {"type": "object",
                                                           "properties": {"city": {"type": "string"}}}}}]


def test_tools_round_trip(server, client, reference):  # noqa: F811
    """Tools are rendered as tool_json_schemas; a tool call and its result go back into the conversation."""
    question = [{"role": "user", "content": "Weather in Paris?"}]
    rendered = httpx.post(server[0] + "/tokenize", json={"messages": question, "tools": TOOLS}).json()["prompt"]
    assert rendered.startswith("<|BOT|>system\n<|BOT|>tool_json_schemas\n" + json.dumps(TOOLS, ensure_ascii=False))
    first = client.chat.completions.create(model=MODEL, messages=question, tools=TOOLS, temperature=0, max_tokens=8)
    want = expect(reference, question, SamplingParams(temperature=0, max_tokens=8, skip_special_tokens=False),
                  tools=TOOLS)
    assert reasoning_of(first.choices[0].message) == want.completions[0].reasoning
    follow_up = question + [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": json.dumps({"city": "Paris"})}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 24 C"}]
    second = client.chat.completions.create(model=MODEL, messages=follow_up, tools=TOOLS, temperature=0,
                                            max_tokens=8)
    want = expect(reference, follow_up, SamplingParams(temperature=0, max_tokens=8, skip_special_tokens=False),
                  tools=TOOLS)
    assert reasoning_of(second.choices[0].message) == want.completions[0].reasoning
    assert second.usage.prompt_tokens == want.prompt_tokens


def test_metrics_count_tokens_and_responses(server, client):
    url = server[0]
    prompt, generated = metric(url, "vllm:prompt_tokens_total"), metric(url, "vllm:generation_tokens_total")
    served = metric(url, "stepaudio:http_responses_total")
    got = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
    assert metric(url, "vllm:prompt_tokens_total") - prompt == got.usage.prompt_tokens
    assert metric(url, "vllm:generation_tokens_total") - generated == got.usage.completion_tokens
    assert metric(url, "stepaudio:http_responses_total") - served >= 1
    text = httpx.get(url + "/metrics").text
    assert 'stepaudio:http_responses_total{route="/v1/chat/completions",status="200"}' in text
    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
                 "vllm:time_to_first_token_seconds_bucket", "vllm:inter_token_latency_seconds_bucket",
                 "vllm:e2e_request_latency_seconds_count", "vllm:request_success_total",
                 "stepaudio:kv_cache_capacity_tokens", "stepaudio:audio_tokens_total"):
        assert name in text, name
