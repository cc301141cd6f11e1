"""`stepaudio serve`: its flags (the official vLLM command's among them), the checks made before the model
loads (paths, port, --limit-mm-per-prompt, chat template), and, once it is up, lines to paste that talk to it.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from pathlib import Path

from .cli_args import non_negative_float, port_number, positive_float, positive_int, require_device, require_path
from .quant.cli import add_quantization_option

CHAT_PROMPT = "Say hello."


def add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="OpenAI-compatible server (drop-in for vLLM's recipe)",
                       description="Serve /v1/chat/completions, /v1/models, /tokenize, /health and /metrics. "
                                   "See docs/SERVER.md.")
    p.add_argument("model_dir", nargs="?", type=Path,
                   help="local checkpoint folder (default: the built-in default model, assembled on first use)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=port_number, default=9999, help="port to listen on")
    p.add_argument("--served-model-name", nargs="+",
                   help="name(s) clients use as 'model' (default: MODEL_DIR, or stepaudio-default)")
    p.add_argument("--max-model-len", type=positive_int,
                   help="prompt + output tokens (default: the model's, capped to the KV cache)")
    p.add_argument("--max-num-seqs", type=positive_int, default=16, help="sequences decoded together")
    p.add_argument("--max-num-batched-tokens", type=positive_int, default=2048, help="largest prefill chunk per step")
    p.add_argument("--kv-cache-memory-gb", type=positive_float, default=1.0, help="memory for the paged KV cache")
    p.add_argument("--compile-decode", action="store_true",
                   help="torch.compile the decode step at start-up (slower start, faster batch-1 decode)")
    p.add_argument("--max-queue", type=positive_int, default=256,
                   help="requests that may wait beyond --max-num-seqs running ones; more get HTTP 429")
    p.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float16", "float32"],
                   help="auto: the checkpoint's torch_dtype")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    add_quantization_option(p)
    p.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on /v1 and /tokenize (default: open)")
    p.add_argument("--chat-template", help="Jinja file or template string (default: the checkpoint's, else the "
                                           "official R1 template)")
    p.add_argument("--reasoning-parser", choices=["step_audio"],
                   help="send the thinking as reasoning_content/reasoning (default: raw content, as upstream)")
    p.add_argument("--max-audio-seconds", type=positive_float, default=1200.0,
                   help="audio per request, all parts together")
    p.add_argument("--limit-mm-per-prompt", default='{"audio": 64}',
                   help="audio parts per request, as vLLM: '{\"audio\": N}'")
    p.add_argument("--allowed-local-media-path", type=Path,
                   help="allow file:// audio URLs under this folder (default: none)")
    p.add_argument("--allowed-media-domains", nargs="+", default=[],
                   help="allow http(s) audio URLs from these hosts ('*': any) (default: none)")
    p.add_argument("--media-fetch-timeout", type=positive_float, default=10.0,
                   help="seconds for one http(s) audio fetch")
    p.add_argument("--max-request-body-mb", type=positive_float, default=64.0,
                   help="larger bodies (and fetched audio files) are refused with 413")
    p.add_argument("--shutdown-timeout", type=non_negative_float, default=30.0,
                   help="on SIGTERM: seconds in-flight requests get to finish while new ones get 503")
    p.add_argument("--audio-token-formula", default="vllm", choices=["vllm", "hf"],
                   help="vllm (as the served R1 numbers) or hf (L-2, the transformers path)")
    p.add_argument("--uvicorn-log-level", default="info", choices=["critical", "error", "warning", "info", "debug"],
                   help="uvicorn's own log level")
    upstream = p.add_argument_group("flags of the official vLLM command (accepted; each logs what it means here)")
    upstream.add_argument("--tensor-parallel-size", type=positive_int,
                          help="accepted, ignored: one device here, the model is not split")
    upstream.add_argument("--trust-remote-code", action="store_true", help="accepted: no remote code is ever run here")
    upstream.add_argument("--interleave-mm-strings", action="store_true", help="accepted: always on here")
    upstream.add_argument("--enable-log-requests", action="store_true", help="log each request and its token counts")
    upstream.add_argument("--gpu-memory-utilization", type=non_negative_float,
                          help="accepted, ignored: --kv-cache-memory-gb sizes the KV cache here")
    upstream.add_argument("--enable-auto-tool-choice", action="store_true", help="accepted: always on here")
    upstream.add_argument("--tool-call-parser", choices=["step_audio"],
                          help="accepted: step_audio is the only format, always used")
    p.set_defaults(func=run_serve)


def audio_limit(value: str) -> int:
    """--limit-mm-per-prompt as vLLM takes it: JSON {"audio": N} (or audio=N)."""
    try:
        limits = json.loads(value) if value.lstrip().startswith("{") else dict([value.split("=", 1)])
        audio = int(limits.pop("audio"))
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"--limit-mm-per-prompt must look like '{{\"audio\": 8}}', got {value!r}") from None
    if limits or audio < 0:
        raise ValueError(f"--limit-mm-per-prompt takes one non-negative audio limit, got {value!r}")
    return audio


def run_serve(args: argparse.Namespace) -> None:
    """Check what can be checked, take the port, then load the model and serve until Ctrl-C."""
    from .default_model import DEFAULT_MODEL_NAME
    from .server.sockets import listening_socket, url_of
    from .text.chat_template import load_chat_template

    require_path(args.model_dir, "model folder", folder=True)
    require_path(args.allowed_local_media_path, "--allowed-local-media-path", folder=True)
    require_device(args.device)
    max_audio_parts = audio_limit(args.limit_mm_per_prompt)
    template = load_chat_template(args.chat_template) if args.chat_template else None
    names = args.served_model_name or [DEFAULT_MODEL_NAME if args.model_dir is None else str(args.model_dir)]
    with listening_socket(args.host, args.port) as sock:
        from .default_model import model_dir_or_default
        from .engine.engine import EngineConfig
        from .server.launcher import build_app, load_engine, log_upstream_flags, serve
        from .server.settings import MiB, ServerSettings

        model_dir = model_dir_or_default(args.model_dir)
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(asctime)s %(name)s: %(message)s")
        log_upstream_flags(vars(args))
        settings = ServerSettings(
            served_model_names=names, model_root=str(model_dir), api_key=args.api_key,
            reasoning_parser=args.reasoning_parser, chat_template=template, max_audio_seconds=args.max_audio_seconds,
            max_audio_parts=max_audio_parts, allowed_local_media_path=args.allowed_local_media_path,
            allowed_media_domains=args.allowed_media_domains, media_fetch_timeout=args.media_fetch_timeout,
            max_body_bytes=int(args.max_request_body_mb * MiB), max_queue=args.max_queue,
            log_requests=args.enable_log_requests, shutdown_timeout=args.shutdown_timeout)
        config = EngineConfig(max_num_seqs=args.max_num_seqs, max_model_len=args.max_model_len,
                              max_num_batched_tokens=args.max_num_batched_tokens,
                              kv_cache_memory_gb=args.kv_cache_memory_gb,
                              audio_token_formula=args.audio_token_formula, compile_decode=args.compile_decode)
        engine = load_engine(model_dir, dtype=None if args.dtype == "auto" else args.dtype, device=args.device,
                             config=config, max_model_len_given=args.max_model_len is not None,
                             quantization=args.quantization)
        ready = ready_message(url_of(sock) + "/v1", names[0], args.api_key is not None)
        serve(build_app(engine, settings), sock, log_level=args.uvicorn_log_level,
              on_ready=lambda: print(ready, flush=True))


def ready_message(api_base: str, model: str, needs_key: bool) -> str:
    """What `serve` prints once it answers: a curl and a `stepaudio chat` line for this server, ready to paste.
    With --api-key they read the key from $STEPAUDIO_API_KEY rather than print it."""
    body = json.dumps({"model": model, "max_tokens": 256, "messages": [{"role": "user", "content": CHAT_PROMPT}]})
    auth = ' -H "Authorization: Bearer $STEPAUDIO_API_KEY"' if needs_key else ""
    key = ' --api-key "$STEPAUDIO_API_KEY"' if needs_key else ""
    lines = [f"stepaudio serve: ready at {api_base} (model {model}). Try it from another terminal"
             + (" (with STEPAUDIO_API_KEY set to the --api-key):" if needs_key else ":"),
             f"  curl {api_base}/chat/completions -H 'Content-Type: application/json'{auth} -d {shlex.quote(body)}",
             f"  {own_command()} chat --api-base {api_base}{key} {shlex.quote(CHAT_PROMPT)}"]
    return "\n".join(lines)


def own_command() -> str:
    """How this process was started, for lines to paste: `.venv/bin/stepaudio` as typed, or `python -m stepaudio`."""
    if Path(sys.argv[0]).name == "stepaudio":
        return shlex.quote(sys.argv[0])
    return f"{shlex.quote(sys.executable)} -m stepaudio"
