"""`stepaudio serve` as a user starts it: the official vLLM flags, start-up logs, a request, the lines to paste
once it is ready, a busy port found before the model loads, clean errors."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest
from openai import OpenAI

from model_fixtures import tiny_dir  # noqa: F401  (fixture)
from server_fixtures import serve_cli
from stepaudio.cli import main
from stepaudio.serve_cli import ready_message
from stepaudio.server.launcher import UPSTREAM_FLAG_NOTES
from stepaudio.text.chat_template import R1_CHAT_TEMPLATE

UPSTREAM_FLAGS = ["--tensor-parallel-size", "4", "--trust-remote-code", "--interleave-mm-strings",
                  "--enable-log-requests", "--gpu-memory-utilization", "0.85", "--enable-auto-tool-choice",
                  "--tool-call-parser", "step_audio"]


def test_serve_with_the_official_flags(tiny_dir, tmp_path):  # noqa: F811
    log = tmp_path / "serve.log"
    args = [str(tiny_dir), "--served-model-name", "Step-Audio-R1", "--max-model-len", "2048", "--max-num-seqs", "4",
            "--kv-cache-memory-gb", "0.01", "--chat-template", R1_CHAT_TEMPLATE, "--reasoning-parser", "step_audio",
            *UPSTREAM_FLAGS]
    with serve_cli(args, log) as url:
        client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        assert [m.id for m in client.models.list()] == ["Step-Audio-R1"]
        got = client.chat.completions.create(model="Step-Audio-R1", messages=[{"role": "user", "content": "Hi"}],
                                             max_tokens=3)
        assert got.usage.completion_tokens >= 1
    text = log.read_text()
    assert f"loaded {tiny_dir}" in text and "on cpu as float32" in text
    assert "KV cache: " in text and "max_model_len 2048" in text
    assert f"{url}/v1" in text
    for note in UPSTREAM_FLAG_NOTES.values():
        assert text.count(note) == 1, note
    assert "request chatcmpl-" in text  # --enable-log-requests


@pytest.mark.parametrize(("argv", "message"), [
    (["serve", "/nonexistent/model"], "does not exist"),
    (["serve", "{tiny}", "--limit-mm-per-prompt", '{"image": 2}'], "--limit-mm-per-prompt"),
    (["serve", "{tiny}", "--max-model-len", "4096", "--kv-cache-memory-gb", "0.0001"], "more than the KV cache"),
    (["serve", "{tiny}", "--chat-template", "no-such-template.jinja"], "neither a readable file"),
])
def test_serve_errors_are_one_line(tiny_dir, capsys, argv, message):  # noqa: F811
    assert main([a.replace("{tiny}", str(tiny_dir)) for a in argv]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("stepaudio serve: error: ") and message in err[-1]


def test_once_ready_it_prints_a_curl_and_a_chat_line_that_work(tiny_dir, tmp_path):  # noqa: F811
    log = tmp_path / "serve.log"
    with serve_cli([str(tiny_dir), "--max-model-len", "256", "--kv-cache-memory-gb", "0.01",
                    "--reasoning-parser", "step_audio"], log) as url:
        lines = log.read_text().splitlines()
        ready = lines.index(f"stepaudio serve: ready at {url}/v1 (model {tiny_dir}). Try it from another terminal:")
        curl, chat = lines[ready + 1:ready + 3]
        assert curl.startswith(f"  curl {url}/v1/chat/completions -H 'Content-Type: application/json' -d '{{")
        assert chat == f"  {sys.executable} -m stepaudio chat --api-base {url}/v1 'Say hello.'"
        reply = subprocess.run(["bash", "-c", curl], capture_output=True, text=True, timeout=60)
        assert json.loads(reply.stdout)["choices"][0]["message"]["role"] == "assistant"
        chatted = subprocess.run(["bash", "-c", chat], capture_output=True, text=True, timeout=120)
        # The line samples unseeded from a random model, which sometimes ends at once (stdout "\n"): check that
        # the command ran without an error and that the reasoning parser kept raw think tags out of it.
        assert chatted.returncode == 0 and not chatted.stderr, chatted.stderr
        assert "<think>" not in chatted.stdout and "</think>" not in chatted.stdout, chatted.stdout


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port another server listens on."""
    with socket.create_server(("127.0.0.1", 0)) as other:
        yield other.getsockname()[1]


def test_a_busy_port_is_reported_before_the_model_loads(busy_port, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("STEPAUDIO_CACHE_DIR", str(tmp_path))   # loading the default model would assemble it here
    assert main(["serve", "--port", str(busy_port)]) == 1
    assert capsys.readouterr().err == f"stepaudio serve: error: port {busy_port} is in use; pass --port\n"
    assert list(tmp_path.iterdir()) == []


def test_the_ready_lines_read_the_api_key_from_the_environment():
    lines = ready_message("http://127.0.0.1:9999/v1", "m", needs_key=True).splitlines()
    assert lines[0].endswith("Try it from another terminal (with STEPAUDIO_API_KEY set to the --api-key):")
    assert ' -H "Authorization: Bearer $STEPAUDIO_API_KEY" ' in lines[1]
    assert lines[2].endswith(' chat --api-base http://127.0.0.1:9999/v1 --api-key "$STEPAUDIO_API_KEY" \'Say hello.\'')
