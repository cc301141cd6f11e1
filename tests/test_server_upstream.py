"""The official Step-Audio-R1 client works unchanged: its exact request, and its way of reading the answer.

`stepaudior1vllm.py` (stepfun-ai/Step-Audio-R1) cuts audio into 25 s WAV chunks at the file's own
rate, sends role "human" messages, an assistant "<think>\\n" prefill with `eot: False` (hence
continue_final_message), skip_special_tokens false, stop_token_ids [151665] and max_tokens 32000,
to a server started without a reasoning parser. It reads `data: ` lines up to `[DONE]` and takes
`choices[0].delta.content`, skipping lines it cannot parse; without streaming it reads the body
line by line the same way and takes `choices[0].message.content`.
"""

from __future__ import annotations

import base64
import io
import json

import httpx
import numpy as np
import pytest
import soundfile as sf

from model_fixtures import tiny_dir  # noqa: F401  (fixture)
from server_fixtures import MODEL, reference, running_server  # noqa: F401
from stepaudio.engine.sampling import SamplingParams

QUESTION = ("Which of the following best describes the male vocal in the audio?\nPlease choose the answer from the "
            "following options, do not provide any additional explanations or content: \nA. Soft\nB. Aggressive\n")


def upstream_chunks(data: bytes, max_duration: float = 25.0) -> list[bytes]:
    """What the official client's AudioService.read_audio_file does (pydub slices at the original rate)."""
    wav, sr = sf.read(io.BytesIO(data), dtype="int16", always_2d=True)
    duration = len(wav) / sr
    if duration <= max_duration:
        return [data]
    size = int(max_duration * 1000) * sr // 1000
    out = []
    for i in range(int(duration // max_duration) + 1):
        buf = io.BytesIO()
        sf.write(buf, wav[i * size:(i + 1) * size], sr, format="WAV", subtype="PCM_16")
        out.append(buf.getvalue())
    return out


def sixty_seconds_of_sound() -> bytes:
    sr = 22050
    t = np.arange(60 * sr) / sr
    stereo = np.stack([0.3 * np.sin(2 * np.pi * 220 * t), 0.2 * np.sin(2 * np.pi * 330 * t)], axis=1)
    buf = io.BytesIO()
    sf.write(buf, stereo, sr, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def upstream_payload(stream: bool, **kwargs) -> dict:
    """StepAudioR1.stream(messages, **kwargs) as examples-vllm_r1.py calls it, built the same way."""
    chunks = upstream_chunks(sixty_seconds_of_sound())
    content = [{"type": "text", "text": QUESTION}] + [
        {"type": "input_audio", "input_audio": {"data": base64.b64encode(c).decode("utf-8"), "format": "wav"}}
        for c in chunks]
    payload = dict(kwargs)
    payload["messages"] = [{"role": "human", "content": content},
                           {"role": "assistant", "content": "<think>\n", "eot": False}]
    payload["model"] = MODEL
    payload["stream"] = stream
    payload["skip_special_tokens"] = False
    payload["continue_final_message"] = True
    payload["add_generation_prompt"] = False
    return payload


EXAMPLE = {"max_tokens": 32000, "temperature": 0.7, "repetition_penalty": 1.0, "stop_token_ids": [151665]}


def read_like_upstream(response: httpx.Response, stream: bool) -> str:
    full_text = ""
    for line in response.iter_lines():
        if line == "":
            continue
        try:
            line_str = line[6:] if stream and line.startswith("data: ") else line
            if line_str == "[DONE]":
                break
            data = json.loads(line_str)
            choice_data = data["choices"][0]
            line_content = choice_data["delta"] if stream else choice_data["message"]
            text = line_content.get("tts_content", {}).get("tts_text", None)
            text = text if text is not None else line_content.get("content", "")
            full_text += text or ""
        except json.JSONDecodeError:
            continue
        except (KeyError, IndexError):
            continue
    return full_text


@pytest.fixture(scope="module")
def url(reference):  # noqa: F811
    """Started as the official recipe starts vLLM: no reasoning parser (and a short context for the tiny model)."""
    with running_server(reference, engine_options={"max_model_len": 1024}) as base:
        yield base


def test_the_official_request_streams(url, reference):  # noqa: F811
    payload = upstream_payload(stream=True, **EXAMPLE)
    assert len(payload["messages"][0]["content"]) == 4  # text + 25 s + 25 s + 10 s
    with httpx.stream("POST", url + "/v1/chat/completions", json=payload, timeout=120) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        text = read_like_upstream(response, stream=True)
    assert text
    rendered = httpx.post(url + "/tokenize", json={k: payload[k] for k in (
        "messages", "continue_final_message", "add_generation_prompt")}).json()
    assert rendered["prompt"] == (f"<|BOT|>human\n{QUESTION}\n<audio_patch><audio_patch><audio_patch><|EOT|>"
                                  "<|BOT|>assistant\n<think>\n")
    assert rendered["audio_tokens"] == 313 + 313 + 125


@pytest.mark.parametrize("stream", [True, False])
def test_the_official_request_answers_what_the_engine_answers(url, reference, stream):  # noqa: F811
    """Same request at temperature 0, so the answer is fixed: the raw text, `</think>` and all."""
    payload = upstream_payload(stream=stream, **{**EXAMPLE, "temperature": 0, "max_thinking_tokens": 4,
                                                 "max_tokens": 12})
    with httpx.stream("POST", url + "/v1/chat/completions", json=payload, timeout=120) as response:
        text = read_like_upstream(response, stream=stream)
    [want] = reference.chat([payload["messages"]], SamplingParams(temperature=0, max_tokens=12, max_thinking_tokens=4,
                                                                 skip_special_tokens=False),
                            continue_final_message=True, add_generation_prompt=False)
    assert text == want.completions[0].text and "</think>" in text
