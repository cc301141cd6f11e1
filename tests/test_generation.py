"""Greedy generation with the KV cache equals full recomputation; the generate CLI works end to end."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from model_fixtures import tiny_dir  # noqa: F401  (fixture)
from stepaudio.generation import generate_tokens
from stepaudio.inputs import prepare_chat
from stepaudio.model.loader import load_model
from stepaudio.pipeline import audio_question_messages
from stepaudio.text.tokenizer import StepTokenizer


def tone(seconds: float, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * 16000)) / 16000
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.fixture(scope="module")
def setup(tiny_dir):
    model = load_model(tiny_dir, dtype="float32")
    tok = StepTokenizer.from_dir(tiny_dir)
    chunks = [tone(2.0), tone(0.7, 880.0)]
    prepared = prepare_chat(tok, audio_question_messages("Which tone is higher?", len(chunks)), chunks)
    return model, tok, prepared


def greedy_by_recomputation(model, ids, embeds, patch_id, n):
    ids = list(ids)
    out = []
    with torch.no_grad():
        for _ in range(n):
            t = torch.tensor([ids])
            hidden = model(t, torch.arange(len(ids))[None], torch.cat(embeds), t == patch_id)
            token = int(model.compute_logits(hidden[0, -1]).argmax())
            out.append(token)
            ids.append(token)
    return out


def test_prompt_has_one_audio_block_per_chunk(setup):
    _, tok, prepared = setup
    assert prepared.audio_tokens == [25, 9]  # 2.0 s -> 25 tokens, 0.7 s -> 9 tokens (vLLM formula)
    ids = prepared.token_ids
    assert ids.count(tok.audio_start_id) == 2 and ids.count(tok.audio_patch_id) == 34
    assert prepared.prompt.endswith("Which tone is higher?\n<audio_patch><audio_patch><|EOT|><|BOT|>assistant\n<think>\n")


def test_cached_greedy_equals_full_recomputation(setup):
    model, tok, prepared = setup
    embeds = model.encode_audio(prepared.mels)
    cached = list(generate_tokens(model, prepared.token_ids, audio_embeds=embeds, audio_patch_id=tok.audio_patch_id,
                                  max_new_tokens=24))
    reference = greedy_by_recomputation(model, prepared.token_ids, embeds, tok.audio_patch_id, 24)
    assert cached == reference and len(cached) == 24


def test_audio_changes_the_output(setup):
    model, tok, prepared = setup
    quiet = [torch.zeros_like(e) for e in model.encode_audio(prepared.mels)]
    loud = model.encode_audio(prepared.mels)
    with torch.no_grad():
        ids = torch.tensor([prepared.token_ids])
        pos = torch.arange(len(prepared.token_ids))[None]
        rows = ids == tok.audio_patch_id
        a = model.compute_logits(model(ids, pos, torch.cat(loud), rows)[0, -1])
        b = model.compute_logits(model(ids, pos, torch.cat(quiet), rows)[0, -1])
    assert (a - b).abs().max().item() > 1e-3


def test_stop_token_ends_generation_and_seed_reproduces(setup):
    model, tok, prepared = setup
    embeds = model.encode_audio(prepared.mels)
    kwargs = dict(audio_embeds=embeds, audio_patch_id=tok.audio_patch_id, max_new_tokens=16, temperature=1.0)
    a = list(generate_tokens(model, prepared.token_ids, seed=7, **kwargs))
    b = list(generate_tokens(model, prepared.token_ids, seed=7, **kwargs))
    assert a == b
    stop = a[3]
    c = list(generate_tokens(model, prepared.token_ids, seed=7, stop_token_ids={stop}, **kwargs))
    assert c == a[: a.index(stop) + 1]


def test_mismatched_audio_count_is_refused(setup):
    model, tok, prepared = setup
    embeds = model.encode_audio(prepared.mels[:1])
    with pytest.raises(ValueError, match="34 <audio_patch> tokens but the audio gives 25"):
        next(generate_tokens(model, prepared.token_ids, audio_embeds=embeds, audio_patch_id=tok.audio_patch_id))


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stepaudio", *args], capture_output=True, text=True, timeout=300)


def test_generate_cli_prints_thinking_and_answer(tiny_dir, tmp_path):
    wav = tmp_path / "long.wav"
    sf.write(wav, np.concatenate([tone(26.0), tone(4.0, 660.0)]), 16000)
    done = run_cli("generate", "--model", str(tiny_dir), "--audio", str(wav), "--prompt", "Describe it.",
                   "--max-tokens", "8", "--seed", "1", "--temperature", "0.8")
    assert done.returncode == 0, done.stderr
    assert "── thinking ──" in done.stdout and "── answer ──" in done.stdout
    # 30 s -> chunks of 25 s (313 tokens) and 5 s (63 tokens).
    assert "(376 audio)" in done.stderr


@pytest.mark.parametrize("args,message", [
    (["--model", "/nonexistent", "--prompt", "hi"], "model folder /nonexistent does not exist"),
    (["--audio", "/nonexistent.wav"], "/nonexistent.wav"),
    (["--audio", __file__], "could not decode audio"),
])
def test_generate_cli_errors_are_one_line(tiny_dir, args, message):
    if "--model" not in args:
        args = ["--model", str(tiny_dir), *args]
    done = run_cli("generate", *args)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("stepaudio generate: error:") and message in lines[0]


def test_make_tiny_cli(tmp_path):
    done = run_cli("make-tiny", str(tmp_path / "t"), "--shards", "3")
    assert done.returncode == 0, done.stderr
    assert len(list((tmp_path / "t").glob("model-0000?-of-00003.safetensors"))) == 3
    assert load_model(tmp_path / "t").lm_head.weight.dtype == torch.bfloat16


def test_generate_cli_takes_a_chat_template(tiny_dir, tmp_path):
    template = tmp_path / "plain.jinja"
    template.write_text("{{ messages[-1].content }}")
    done = run_cli("generate", "--model", str(tiny_dir), "--prompt", "Hello there", "--max-tokens", "2",
                   "--chat-template", str(template))
    assert done.returncode == 0, done.stderr
    assert "prompt tokens (0 audio)" in done.stderr
    prompt_tokens = int(done.stderr.split("[")[-1].split()[0])
    assert prompt_tokens == len(StepTokenizer.from_dir(tiny_dir).encode("Hello there"))  # no R1 framing


def test_empty_prompt_is_refused(setup):
    model, _, _ = setup
    with pytest.raises(ValueError, match="prompt is empty"):
        next(generate_tokens(model, []))
