"""Start a server: load the checkpoint into one engine, build the app, run uvicorn (blocking or in a thread)."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from types import FrameType, TracebackType

import uvicorn
from fastapi import FastAPI

from ..engine.async_engine import AsyncEngine
from ..engine.engine import EngineConfig, LLMEngine
from ..engine.kv_cache import KVPool
from ..model.loader import load_model
from ..model.step_audio import StepAudioForCausalLM
from ..text.tokenizer import StepTokenizer
from .app import create_app
from .drain import Drain
from .settings import ServerSettings
from .sockets import listening_socket, url_of

logger = logging.getLogger("stepaudio.server")

# Flags of the official `vllm serve` command that mean nothing (or something else) for one process.
UPSTREAM_FLAG_NOTES = {
    "tensor_parallel_size": "--tensor-parallel-size: one process on one device here; the model is not split",
    "trust_remote_code": "--trust-remote-code: no remote code is ever run; the Step-Audio model code is built in",
    "interleave_mm_strings": "--interleave-mm-strings: always on here; text and audio parts keep their order",
    "enable_log_requests": "--enable-log-requests: each request is logged with its token counts and sampling "
                           "parameters",
    "gpu_memory_utilization": "--gpu-memory-utilization: the KV cache size is set by --kv-cache-memory-gb here",
    "enable_auto_tool_choice": "--enable-auto-tool-choice: always on here; Step-Audio tool calls are parsed "
                               "whenever a request offers tools",
    "tool_call_parser": "--tool-call-parser: the step_audio format is the only one and always used",
}


def log_upstream_flags(given: dict[str, object]) -> None:
    """One log line per upstream vLLM flag that was given, saying what it means here."""
    for name, note in UPSTREAM_FLAG_NOTES.items():
        if given.get(name) not in (None, False):
            logger.info("accepted %s", note)


def load_engine(model_dir: str | Path, *, dtype: str | None, device: str, config: EngineConfig,
                max_model_len_given: bool, quantization: str | None = None) -> LLMEngine:
    """The engine, with max_model_len lowered to the KV capacity unless the user asked for more (an error)."""
    tokenizer = StepTokenizer.from_dir(model_dir)
    model = load_model(model_dir, dtype=dtype, device=device, progress=True, quantization=quantization)
    params = sum(p.numel() for p in model.parameters())  # before the engine packs the LLM's weights
    engine = LLMEngine(model, tokenizer, _no_bigger_than_needed(config, model))
    if engine.max_model_len > engine.kv_capacity_tokens:
        if max_model_len_given:
            raise ValueError(f"--max-model-len {engine.max_model_len} is more than the KV cache holds "
                             f"({engine.kv_capacity_tokens} tokens); raise --kv-cache-memory-gb or lower it")
        logger.info("max_model_len lowered to the KV cache capacity: %d tokens", engine.kv_capacity_tokens)
        engine.max_model_len = engine.kv_capacity_tokens
    logger.info("loaded %s: %.1f M parameters, %d decoder layers, on %s as %s", model_dir, params / 1e6,
                model.config.text.num_hidden_layers, model.device, str(model.dtype).removeprefix("torch."))
    logger.info("KV cache: %d tokens (%d blocks of %d); max_model_len %d; max_num_seqs %d",
                engine.kv_capacity_tokens, engine.blocks.num_blocks, engine.blocks.block_size,
                engine.max_model_len, config.max_num_seqs)
    return engine


def _no_bigger_than_needed(config: EngineConfig, model: StepAudioForCausalLM) -> EngineConfig:
    """Cap the KV cache at what max_num_seqs sequences of max_model_len tokens can use: a small model
    should not take --kv-cache-memory-gb of memory it can never fill."""
    if config.num_kv_blocks is not None:
        return config
    text = model.config.text
    longest = min(config.max_model_len or text.max_position_embeddings, text.max_position_embeddings)
    needed = -(-config.max_num_seqs * longest // config.block_size)
    per_block = KVPool.bytes_per_block(text.num_hidden_layers, config.block_size, text.num_key_value_heads,
                                       text.head_dim, model.dtype)
    if needed * per_block >= config.kv_cache_memory_gb * 2**30:
        return config
    return replace(config, num_kv_blocks=needed)


def build_app(engine: LLMEngine, settings: ServerSettings) -> FastAPI:
    return create_app(AsyncEngine(engine), settings)


class _Server(uvicorn.Server):
    """uvicorn's server, calling `on_ready` once it accepts connections, and draining on the first SIGTERM
    (see drain.py) before uvicorn's own shutdown; a second SIGTERM, or Ctrl-C, stops at once as before."""

    def __init__(self, config: uvicorn.Config, on_ready: Callable[[], None] | None = None):
        super().__init__(config)
        self._on_ready = on_ready
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_task: asyncio.Task | None = None  # held: the loop keeps only a weak reference to tasks

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets=sockets)
        if self.started and self._on_ready is not None:
            self._on_ready()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        drain = getattr(self.config.app.state, "drain", None)
        if sig != signal.SIGTERM or drain is None or drain.draining or self._loop is None:
            super().handle_exit(sig, frame)
            return
        logger.info("SIGTERM: refusing new requests, letting those in flight finish (at most %g s)", drain.timeout)
        self._loop.call_soon_threadsafe(self._start_drain, drain, sig, frame)

    def _start_drain(self, drain: Drain, sig: int, frame: FrameType | None) -> None:
        self._drain_task = asyncio.get_running_loop().create_task(self._drain_then_exit(drain, sig, frame))

    async def _drain_then_exit(self, drain: Drain, sig: int, frame: FrameType | None) -> None:
        await drain.run()
        super().handle_exit(sig, frame)


def _uvicorn(app: FastAPI, log_level: str, on_ready: Callable[[], None] | None = None) -> uvicorn.Server:
    # --max-request-body-mb caps a WebSocket message too (/v1/realtime): a larger one closes it with 1009
    ws_max_size = getattr(app.state, "max_body_bytes", 16 * 1024 * 1024)
    return _Server(uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=3, lifespan="off",
                                  ws_max_size=ws_max_size), on_ready)


def serve(app: FastAPI, sock: socket.socket, log_level: str = "info",
          on_ready: Callable[[], None] | None = None) -> None:
    """Serve on a listening socket (from `listening_socket`) until interrupted (Ctrl-C)."""
    host, port = sock.getsockname()[:2]
    logger.info("serving the OpenAI API at %s/v1 (listening on %s port %d)", url_of(sock), host, port)
    _uvicorn(app, log_level, on_ready).run(sockets=[sock])


class ServerThread:
    """Serve an app from a background thread on a loopback port; a context manager (for chat and tests)."""

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"):
        self._sock = listening_socket(host, port)
        self.url = url_of(self._sock)
        self._server = _uvicorn(app, log_level)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True)

    def __enter__(self) -> ServerThread:
        self._thread.start()
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError("the server thread stopped before it started serving")
            self._thread.join(0.01)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._server.should_exit = True
        self._thread.join(10)
        self._sock.close()


@contextmanager
def private_server(model_dir: str | Path, *, dtype: str | None, device: str,
                   kv_cache_memory_gb: float, quantization: str | None = None) -> Iterator[str]:
    """A server of one's own for `chat --model` and `demo --model`: the checkpoint behind a free loopback
    port with the thinking sent apart (reasoning parser on), for as long as the block lasts; yields the
    OpenAI API base URL."""
    engine = load_engine(model_dir, dtype=dtype, device=device,
                         config=EngineConfig(kv_cache_memory_gb=kv_cache_memory_gb), max_model_len_given=False,
                         quantization=quantization)
    settings = ServerSettings(served_model_names=[str(model_dir)], model_root=str(model_dir),
                              reasoning_parser="step_audio")
    with ServerThread(build_app(engine, settings)) as server:
        yield server.url + "/v1"
