"""The offline LLM API: chat with audio parts in every accepted form, long audio chunked at 25 s."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import soundfile as sf

from model_fixtures import tiny_dir  # noqa: F401  (fixture)
from stepaudio.audio.io import AudioError
from stepaudio.engine.llm import LLM
from stepaudio.engine.sampling import SamplingParams


def wav_bytes(seconds: float) -> bytes:
    t = np.arange(int(seconds * 16000)) / 16000
    buf = io.BytesIO()
    sf.write(buf, (0.3 * np.sin(2 * np.pi * 300 * t)).astype(np.float32), 16000, format="WAV")
    return buf.getvalue()


@pytest.fixture(scope="module")
def llm(tiny_dir):
    return LLM(tiny_dir, dtype="float32", num_kv_blocks=256, block_size=16)


def test_chat_with_long_audio_in_every_part_form(llm, tmp_path):
    data = wav_bytes(30.0)
    path = tmp_path / "a.wav"
    path.write_bytes(data)
    b64 = base64.b64encode(data).decode()
    forms = [{"type": "input_audio", "input_audio": {"data": b64, "format": "wav"}},
             {"type": "audio_url", "audio_url": {"url": f"data:audio/wav;base64,{b64}"}},
             {"type": "audio_url", "audio_url": {"url": f"file://{path}"}},
             {"type": "audio", "audio": str(path)}]
    convs = [[{"role": "user", "content": [{"type": "text", "text": "Describe."}, part]}] for part in forms]
    results = llm.chat(convs, SamplingParams(temperature=0, max_tokens=6, ignore_eos=True))
    assert {r.audio_tokens for r in results} == {313 + 63}  # 25 s + 5 s chunks
    texts = {tuple(r.completions[0].token_ids) for r in results}
    assert len(texts) == 1 and len(next(iter(texts))) == 6
    assert all(r.completions[0].finish_reason == "length" for r in results)
    assert all(r.completions[0].completion_tokens == 6 for r in results)
    # The same audio and text again: every full block but the last prompt token's comes from the prefix cache.
    assert results[0].cached_tokens == 0
    assert results[-1].cached_tokens == (results[-1].prompt_tokens - 1) // 16 * 16 > 0


def test_thinking_budget_is_reported_in_token_counts(llm):
    conv = [{"role": "user", "content": "Think briefly."}]
    [result] = llm.chat([conv], SamplingParams(temperature=0, max_tokens=20, ignore_eos=True, max_thinking_tokens=3))
    completion = result.completions[0]
    assert completion.reasoning_tokens == 3
    assert completion.completion_tokens == len(completion.token_ids) == 20
    assert result.prompt_tokens > 0 and result.audio_tokens == 0


def test_bad_audio_part_is_a_clear_error(llm):
    conv = [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "not base64!"}}]}]
    with pytest.raises(AudioError, match="not valid base64"):
        llm.chat([conv])
