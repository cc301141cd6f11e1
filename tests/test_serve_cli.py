"""`stepaudio serve` as a user starts it: the official vLLM flags, start-up logs, a request, clean errors."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest
from openai import OpenAI

from model_fixtures import tiny_dir  # noqa: F401  (fixture)
from stepaudio.cli import main
from stepaudio.server.launcher import UPSTREAM_FLAG_NOTES
from stepaudio.text.chat_template import R1_CHAT_TEMPLATE

UPSTREAM_FLAGS = ["--tensor-parallel-size", "4", "--trust-remote-code", "--interleave-mm-strings",
                  "--enable-log-requests", "--gpu-memory-utilization", "0.85", "--enable-auto-tool-choice",
                  "--tool-call-parser", "step_audio"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_with_the_official_flags(tiny_dir, tmp_path):  # noqa: F811
    port = free_port()
    log = tmp_path / "serve.log"
    cmd = [sys.executable, "-m", "stepaudio", "serve", str(tiny_dir), "--port", str(port), "--served-model-name",
           "Step-Audio-R1", "--max-model-len", "2048", "--max-num-seqs", "4", "--kv-cache-memory-gb", "0.01",
           "--chat-template", R1_CHAT_TEMPLATE, "--reasoning-parser", "step_audio", *UPSTREAM_FLAGS]
    with open(log, "w") as err:
        server = subprocess.Popen(cmd, stdout=err, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, log.read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
        assert [m.id for m in client.models.list()] == ["Step-Audio-R1"]
        got = client.chat.completions.create(model="Step-Audio-R1", messages=[{"role": "user", "content": "Hi"}],
                                             max_tokens=3)
        assert got.usage.completion_tokens >= 1
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(20)
    text = log.read_text()
    assert f"loaded {tiny_dir}" in text and "on cpu as float32" in text
    assert "KV cache: " in text and "max_model_len 2048" in text
    assert f"http://127.0.0.1:{port}/v1" in text
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
