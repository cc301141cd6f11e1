"""Real servers for the server tests: uvicorn on a free loopback port, one tiny checkpoint, and the engine's
offline API (LLM) on the same weights as the reference for what the model says."""

from __future__ import annotations

import base64
import io
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf

from model_fixtures import tiny_dir  # noqa: F401  (fixture)
from stepaudio.engine.engine import EngineConfig, LLMEngine
from stepaudio.engine.llm import LLM
from stepaudio.server.launcher import ServerThread, build_app
from stepaudio.server.settings import ServerSettings

MODEL = "tiny-step-audio"
ENGINE_OPTIONS = {"num_kv_blocks": 512, "block_size": 16}   # 8192 tokens of KV; a few MB for the tiny model


def tone(seconds: float, freq: float = 440.0, sr: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def wav_bytes(wav: np.ndarray, sr: int = 16000, subtype: str = "PCM_16") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, wav, sr, format="WAV", subtype=subtype)
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def audio_part(data: bytes) -> dict[str, Any]:
    return {"type": "input_audio", "input_audio": {"data": b64(data), "format": "wav"}}


@pytest.fixture(scope="module")
def reference(tiny_dir: Path) -> LLM:  # noqa: F811
    """The offline engine on the tiny checkpoint: what the server must answer."""
    return LLM(tiny_dir, dtype="float32", **ENGINE_OPTIONS)


@contextmanager
def running_server(llm: LLM, engine_options: dict[str, Any] | None = None, **settings: Any) -> Iterator[str]:
    """A server sharing the reference's weights (its own engine and KV cache); yields its base URL."""
    engine = LLMEngine(llm.model, llm.tokenizer, EngineConfig(**{**ENGINE_OPTIONS, **(engine_options or {})}))
    options = {"served_model_names": [MODEL], "model_root": "tiny", **settings}
    with ServerThread(build_app(engine, ServerSettings(**options))) as server:
        yield server.url


def metric(url: str, name: str) -> float:
    """A metric's value from /metrics: the sum over its label sets ('name{' or 'name ' lines)."""
    lines = httpx.get(url + "/metrics").text.splitlines()
    return sum(float(ln.rsplit(" ", 1)[1]) for ln in lines if ln.startswith((name + "{", name + " ")))


def wait_idle(url: str, also: Callable[[], bool] = lambda: True, seconds: float = 15) -> None:
    """Until the engine holds no request and no KV block (aborts are applied between engine steps) and
    `also()` holds."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if metric(url, "vllm:num_requests_running") == 0 and metric(url, "vllm:kv_cache_usage_perc") == 0 and also():
            return
        time.sleep(0.05)
    raise AssertionError("the engine still holds requests or KV blocks, or the server is not done")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve_cli(args: list[str], log: Path, timeout: float = 60) -> Iterator[str]:
    """`python -m stepaudio serve ARGS --port P` as a user starts it; see `serve_command`."""
    port = free_port()
    with serve_command([sys.executable, "-m", "stepaudio", "serve", *args, "--port", str(port)], port, log,
                       timeout) as url:
        yield url


@contextmanager
def serve_command(argv: list[str], port: int, log: Path, timeout: float = 60, cwd: Path | None = None) -> Iterator[str]:
    """Run a command line that serves on `port`; yield its base URL once /health answers and stop it with Ctrl-C
    (SIGINT) afterwards. Its output (stdout and stderr) goes to `log`."""
    with serving_process(argv, port, log, timeout, cwd):
        yield f"http://127.0.0.1:{port}"


@contextmanager
def serving_process(argv: list[str], port: int, log: Path, timeout: float = 60,
                    cwd: Path | None = None) -> Iterator[subprocess.Popen]:
    """`serve_command`, yielding the process (for tests that signal it themselves)."""
    with open(log, "w") as out:
        server = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=cwd)
    try:
        deadline = time.monotonic() + timeout
        while True:
            assert server.poll() is None, log.read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        yield server
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(30)
