"""client.py: audio as 25 s input_audio parts, and streams split into thinking and answer, against real servers."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import soundfile as sf
from openai import OpenAI

from model_fixtures import tiny_dir  # noqa: F401  (fixture)
from server_fixtures import MODEL, reference, running_server, tone, wav_bytes  # noqa: F401
from stepaudio.audio.io import load_audio, split_chunks
from stepaudio.client import ThinkingSplitter, audio_parts, split_stream, stream_chat, user_message
from stepaudio.engine.sampling import SamplingParams


def test_long_audio_becomes_one_wav_part_per_25_s(tmp_path):
    path = tmp_path / "long.flac"
    sf.write(path, np.stack([tone(60.0, 300, sr=44100), tone(60.0, 500, sr=44100)], axis=1), 44100)
    parts = audio_parts(path)
    assert [p["type"] for p in parts] == ["input_audio"] * 3
    decoded = [sf.read(io.BytesIO(base64.b64decode(p["input_audio"]["data"])), dtype="float32") for p in parts]
    assert [(len(wav), sr) for wav, sr in decoded] == [(400000, 16000), (400000, 16000), (160000, 16000)]
    for (wav, _), want in zip(decoded, split_chunks(load_audio(path))):
        assert np.abs(wav - want).max() < 1e-4  # 16-bit PCM
    assert len(audio_parts(wav_bytes(tone(3.0)))) == 1


def test_user_message_puts_the_text_first():
    message = user_message("What is it?", wav_bytes(tone(1.0)))
    assert message["role"] == "user"
    assert [p["type"] for p in message["content"]] == ["text", "input_audio"]
    assert user_message("hi") == {"role": "user", "content": [{"type": "text", "text": "hi"}]}


def test_raw_text_splits_at_think_end_whatever_the_pieces():
    raw = "hmm, a tone\n</think>\nIt is a tone."
    for size in (1, 3, len(raw)):
        pieces = [{"content": raw[i:i + size]} for i in range(0, len(raw), size)]
        splitter = ThinkingSplitter()
        out = [p for d in pieces for p in splitter.feed(d)] + splitter.finish()
        assert "".join(t for k, t in out if k == "thinking") == "hmm, a tone\n"
        assert "".join(t for k, t in out if k == "answer") == "It is a tone."
    splitter = ThinkingSplitter(starts_in_thinking=False)
    assert splitter.feed({"content": "Just the answer."}) + splitter.finish() == [("answer", "Just the answer.")]


QUESTION = [{"role": "user", "content": "What do you hear?"}]
OPTIONS = {"temperature": 0, "max_tokens": 12}
THINK = {"max_thinking_tokens": 4}


@pytest.fixture(scope="module")
def servers(reference):  # noqa: F811
    with running_server(reference, reasoning_parser="step_audio") as split, running_server(reference) as raw:
        yield {"split": split, "raw": raw}


@pytest.mark.parametrize("kind", ["split", "raw"])
def test_split_stream_gives_the_engine_reasoning_and_answer(servers, reference, kind):  # noqa: F811
    [want] = reference.chat([QUESTION], SamplingParams(**OPTIONS, **THINK))
    completion = want.completions[0]
    client = OpenAI(base_url=servers[kind] + "/v1", api_key="unused", max_retries=0)
    typed = client.chat.completions.create(model=MODEL, messages=QUESTION, stream=True, extra_body=THINK, **OPTIONS)
    plain = stream_chat(servers[kind] + "/v1", {"model": MODEL, "messages": QUESTION, **OPTIONS, **THINK})
    for chunks in (typed, plain):
        pieces = list(split_stream(chunks))
        assert "".join(t for k, t in pieces if k == "thinking") == completion.reasoning
        assert "".join(t for k, t in pieces if k == "answer") == completion.content != ""
