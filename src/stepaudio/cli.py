"""`stepaudio` command line: serve, chat, demo, generate, make-tiny, train, eval."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from . import __version__
from .evaluation.cli import add_eval, with_default_subcommand


def _add_make_tiny(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("make-tiny", help="write a random small Step-Audio checkpoint in the official format")
    p.add_argument("out_dir", type=Path)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shards", type=int, default=2, help="number of safetensors shards (1 = model.safetensors)")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--hidden-size", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--tie-word-embeddings", action="store_true")
    p.set_defaults(func=_run_make_tiny)


def _run_make_tiny(args: argparse.Namespace) -> None:
    from .model.tiny import write_tiny_checkpoint

    out = write_tiny_checkpoint(args.out_dir, seed=args.seed, num_shards=args.shards, dtype=args.dtype,
                                tie_word_embeddings=args.tie_word_embeddings, hidden=args.hidden_size,
                                layers=args.layers)
    print(f"wrote a random tiny Step-Audio checkpoint to {out}")


def _add_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="one-shot: answer a question about an audio file")
    p.add_argument("--model", type=Path, help="local checkpoint folder (default: the built-in default model)")
    p.add_argument("--audio", type=Path, help="wav/flac/ogg/mp3/webm/m4a file (split into 25 s chunks)")
    p.add_argument("--prompt", default="", help="text sent with the audio")
    p.add_argument("--system", default=None, help="optional system prompt")
    p.add_argument("--max-tokens", type=int, default=512)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--dtype", default=None, help="bfloat16 | float16 | float32 (default: the checkpoint's)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--chat-template", default=None,
                   help="Jinja file or template string (default: the checkpoint's, else the official R1 template)")
    p.add_argument("--audio-token-formula", default="vllm", choices=["vllm", "hf"],
                   help="vllm (default, as the served R1 numbers) or hf (L-2, the transformers path)")
    p.set_defaults(func=_run_generate)


def _run_generate(args: argparse.Namespace) -> None:
    from .default_model import model_dir_or_default
    from .pipeline import answer_audio_question
    from .text.chat_template import load_chat_template

    if args.audio is None and not args.prompt:
        raise ValueError("give --audio, --prompt or both")
    if args.max_tokens < 1:
        raise ValueError("--max-tokens must be at least 1")
    result = answer_audio_question(model_dir_or_default(args.model), audio=args.audio, prompt=args.prompt, system=args.system,
                                   max_tokens=args.max_tokens, temperature=args.temperature, seed=args.seed,
                                   dtype=args.dtype, device=args.device, formula=args.audio_token_formula,
                                   template=load_chat_template(args.chat_template) if args.chat_template else None)
    print("── thinking ──")
    print(result.reasoning.strip("\n"))
    print("── answer ──")
    print(result.answer)
    print(f"[{result.prompt_tokens} prompt tokens ({result.audio_tokens} audio), {result.completion_tokens} "
          f"generated, finish: {result.finish_reason}]", file=sys.stderr)


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="OpenAI-compatible server (a drop-in for the official vLLM recipe)",
                       description="Serve /v1/chat/completions, /v1/models, /tokenize, /health and /metrics. "
                                   "See docs/SERVER.md.")
    p.add_argument("model_dir", nargs="?", type=Path,
                   help="local checkpoint folder (default: the built-in default model, assembled on first use)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=9999)
    p.add_argument("--served-model-name", nargs="+", help="name(s) clients use as 'model' (default: MODEL_DIR)")
    p.add_argument("--max-model-len", type=int, help="prompt + output tokens (default: the model's, capped to "
                                                      "the KV cache)")
    p.add_argument("--max-num-seqs", type=int, default=16, help="sequences decoded together")
    p.add_argument("--max-num-batched-tokens", type=int, default=2048, help="largest prefill chunk per step")
    p.add_argument("--kv-cache-memory-gb", type=float, default=1.0, help="memory for the paged KV cache")
    p.add_argument("--compile-decode", action="store_true",
                   help="torch.compile the decode step at start-up (slower start, faster batch-1 decode)")
    p.add_argument("--max-queue", type=int, default=256,
                   help="requests that may wait beyond --max-num-seqs running ones; more get HTTP 429")
    p.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float16", "float32"],
                   help="auto: the checkpoint's torch_dtype")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on /v1 and /tokenize")
    p.add_argument("--chat-template", help="Jinja file or template string (default: the checkpoint's, else the "
                                           "official R1 template)")
    p.add_argument("--reasoning-parser", choices=["step_audio"],
                   help="send the thinking as reasoning_content/reasoning (default: raw content, as upstream)")
    p.add_argument("--max-audio-seconds", type=float, default=1200.0, help="audio per request, all parts together")
    p.add_argument("--limit-mm-per-prompt", default='{"audio": 64}', help="audio parts per request, as vLLM: "
                                                                         "'{\"audio\": N}'")
    p.add_argument("--allowed-local-media-path", type=Path, help="allow file:// audio URLs under this folder")
    p.add_argument("--allowed-media-domains", nargs="+", default=[],
                   help="allow http(s) audio URLs from these hosts ('*': any); off by default")
    p.add_argument("--media-fetch-timeout", type=float, default=10.0, help="seconds for one http(s) audio fetch")
    p.add_argument("--max-request-body-mb", type=float, default=64.0,
                   help="larger bodies (and fetched audio files) are refused with 413")
    p.add_argument("--audio-token-formula", default="vllm", choices=["vllm", "hf"])
    p.add_argument("--uvicorn-log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    upstream = p.add_argument_group("flags of the official vLLM command (accepted; each logs what it means here)")
    upstream.add_argument("--tensor-parallel-size", type=int)
    upstream.add_argument("--trust-remote-code", action="store_true")
    upstream.add_argument("--interleave-mm-strings", action="store_true")
    upstream.add_argument("--enable-log-requests", action="store_true")
    upstream.add_argument("--gpu-memory-utilization", type=float)
    upstream.add_argument("--enable-auto-tool-choice", action="store_true")
    upstream.add_argument("--tool-call-parser", choices=["step_audio"])
    p.set_defaults(func=_run_serve)


def _audio_limit(value: str) -> int:
    """--limit-mm-per-prompt as vLLM takes it: JSON {"audio": N} (or audio=N)."""
    try:
        limits = json.loads(value) if value.lstrip().startswith("{") else dict([value.split("=", 1)])
        audio = int(limits.pop("audio"))
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"--limit-mm-per-prompt must look like '{{\"audio\": 8}}', got {value!r}") from None
    if limits or audio < 0:
        raise ValueError(f"--limit-mm-per-prompt takes one non-negative audio limit, got {value!r}")
    return audio


def _run_serve(args: argparse.Namespace) -> None:
    from .default_model import DEFAULT_MODEL_NAME, model_dir_or_default
    from .engine.engine import EngineConfig
    from .server.launcher import build_app, load_engine, log_upstream_flags, serve
    from .server.settings import MiB, ServerSettings
    from .server.sockets import listening_socket
    from .text.chat_template import load_chat_template

    default_name = [DEFAULT_MODEL_NAME] if args.model_dir is None else [str(args.model_dir)]
    if args.model_dir is not None and not args.model_dir.is_dir():
        raise FileNotFoundError(f"model folder {args.model_dir} does not exist")
    with listening_socket(args.host, args.port) as sock:  # a busy port is found before the model loads
        args.model_dir = model_dir_or_default(args.model_dir)
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(asctime)s %(name)s: %(message)s")
        log_upstream_flags(vars(args))
        settings = ServerSettings(
            served_model_names=args.served_model_name or default_name, model_root=str(args.model_dir),
            api_key=args.api_key, reasoning_parser=args.reasoning_parser,
            chat_template=load_chat_template(args.chat_template) if args.chat_template else None,
            max_audio_seconds=args.max_audio_seconds, max_audio_parts=_audio_limit(args.limit_mm_per_prompt),
            allowed_local_media_path=args.allowed_local_media_path,
            allowed_media_domains=args.allowed_media_domains, media_fetch_timeout=args.media_fetch_timeout,
            max_body_bytes=int(args.max_request_body_mb * MiB), max_queue=args.max_queue,
            log_requests=args.enable_log_requests)
        config = EngineConfig(max_num_seqs=args.max_num_seqs, max_model_len=args.max_model_len,
                              max_num_batched_tokens=args.max_num_batched_tokens,
                              kv_cache_memory_gb=args.kv_cache_memory_gb,
                              audio_token_formula=args.audio_token_formula, compile_decode=args.compile_decode)
        engine = load_engine(args.model_dir, dtype=None if args.dtype == "auto" else args.dtype, device=args.device,
                             config=config, max_model_len_given=args.max_model_len is not None)
        serve(build_app(engine, settings), sock, log_level=args.uvicorn_log_level)

def _add_chat(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("chat", help="chat with a server (--api-base) or a local checkpoint (--model)",
                       description="Streams the thinking (dimmed) and the answer. Without TEXT or --audio, or "
                                   "with --interactive, it keeps a multi-turn conversation.")
    p.add_argument("text", nargs="?", default="", help="the message (with --audio: the question about it)")
    _add_endpoint_options(p, "this chat")
    p.add_argument("--audio", help="audio file sent with the message (cut into 25 s parts)")
    p.add_argument("--interactive", "-i", action="store_true", help="keep chatting after TEXT/--audio")
    p.add_argument("--system", help="system prompt")
    p.add_argument("--max-tokens", type=int, default=2048)
    p.add_argument("--temperature", type=float, default=0.7, help="0 = greedy (the official examples use 0.7)")
    p.add_argument("--top-p", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--max-thinking-tokens", type=int, help="cap the thinking; the model then answers")
    p.add_argument("--no-thinking", action="store_true", help="answer without a <think> block")
    p.set_defaults(func=_run_chat)


def _add_endpoint_options(p: argparse.ArgumentParser, purpose: str) -> None:
    """--api-base or --model (a private server in this process, with its own loading options)."""
    where = p.add_mutually_exclusive_group()
    where.add_argument("--api-base", help="OpenAI API base of a running server, e.g. http://127.0.0.1:9999/v1")
    where.add_argument("--model", type=Path, help=f"checkpoint folder: start a private server for {purpose} "
                                                  "(default, when neither is given: the built-in default model)")
    p.add_argument("--api-key", help="key of the server at --api-base")
    p.add_argument("--dtype", default=None, help="with --model: bfloat16 | float16 | float32")
    p.add_argument("--device", default="cpu", help="with --model: cpu, cuda, ...")
    p.add_argument("--kv-cache-memory-gb", type=float, default=1.0, help="with --model: KV cache size")


def _run_chat(args: argparse.Namespace) -> None:
    from .chat_cli import run_chat

    run_chat(args)


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="web demo in the browser (Gradio), against a server or a local checkpoint",
                       description="Chat with audio and text in a browser: live thinking, sliders, Stop. "
                                   "See docs/DEMO.md.")
    _add_endpoint_options(p, "the demo")
    p.add_argument("--host", default="127.0.0.1", help="address the page listens on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--audio-budget-seconds", type=float,
                   help="audio one conversation may hold (default: upstream's 10 MB of 16 kHz WAV, about 328 s)")
    p.set_defaults(func=_run_demo)


def _run_demo(args: argparse.Namespace) -> None:
    from .demo.launch import run_demo

    run_demo(args)


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train the default model's audio alignment, and evaluate it",
                       description="See docs/DEFAULT_MODEL.md for the recipe, its cost and its results.")
    steps = p.add_subparsers(dest="train_command", required=True)
    a = steps.add_parser("align", help="train adaptor + decoder LoRA on synthesised think-format examples "
                                       "(resumes from OUT if it holds a run)")
    a.add_argument("--out", type=Path, required=True, help="run folder: state, loss log, align_delta.safetensors")
    # Defaults live in AlignConfig (shown in docs/DEFAULT_MODEL.md); an option left out keeps it.
    a.add_argument("--steps", type=int, help="decoder-stage steps (default 600)")
    a.add_argument("--ctc-clips", type=int,
                   help="spoken clips for the adaptor's CTC warm-up before the decoder trains (0: skip it)")
    a.add_argument("--ctc-epochs", type=int)
    a.add_argument("--listening-drill-steps", type=int,
                   help="first steps on transcription of random word lists only (teaches the adaptor to listen)")
    a.add_argument("--generated-questions", type=int,
                   help="questions the base decoder writes (answers self-distilled) for spoken QA items")
    a.add_argument("--generated-sentences", type=int, help="sentences the base decoder writes for transcription")
    a.add_argument("--arithmetic-questions", type=int, help="seeded spoken sums and differences")
    a.add_argument("--batch-size", type=int)
    a.add_argument("--lr-adapter", type=float)
    a.add_argument("--lr-lora", type=float)
    a.add_argument("--lora-rank", type=int, help="LoRA rank (alpha is twice the rank)")
    a.add_argument("--seed", type=int)
    a.add_argument("--save-every", type=int, help="steps between resumable checkpoints")
    a.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    a.add_argument("--init-delta", type=Path,
                   help="start from this delta's adaptor and LoRA (e.g. the committed one) instead of from scratch")
    a.set_defaults(func=_run_train_align)
    e = steps.add_parser("evaluate", help="held-out report: speech vs text accuracy, repeat WER, sound tasks, speed")
    e.add_argument("--model", type=Path, help="model folder (default: the built-in default model)")
    e.add_argument("--base-model", type=Path,
                   help="model for the 'before training' text accuracy (default: the untrained base assembly)")
    e.add_argument("--json", type=Path, default=Path("default_model_eval.json"), help="per-item results")
    e.add_argument("--seed", type=int, default=1)
    e.add_argument("--sound-items", type=int, default=20, help="held-out items per sound task")
    e.add_argument("--no-whisper-reference", dest="whisper_reference", action="store_false",
                   help="skip the cascade reference (the decoder given Whisper-base's own transcripts; "
                        "needs ctranslate2)")
    e.set_defaults(func=_run_train_evaluate)


def _run_train_align(args: argparse.Namespace) -> None:
    from .train.align import AlignConfig, train_align

    options = ("steps", "ctc_clips", "ctc_epochs", "listening_drill_steps", "generated_questions",
               "generated_sentences", "arithmetic_questions", "batch_size", "lr_adapter", "lr_lora", "lora_rank",
               "seed", "save_every", "threads", "init_delta")
    given = {name: getattr(args, name) for name in options if getattr(args, name) is not None}
    if given.get("steps", 1) < 1 or given.get("batch_size", 1) < 1:
        raise ValueError("--steps and --batch-size must be at least 1")
    if any(given.get(name, 0) < 0 for name in options[1:7]):
        raise ValueError("counts of clips, epochs, steps and generated texts cannot be negative")
    if args.init_delta is not None and not args.init_delta.is_file():
        raise ValueError(f"--init-delta {args.init_delta}: no such file")
    if "lora_rank" in given:
        given["lora_alpha"] = 2.0 * given["lora_rank"]
    cfg = AlignConfig(out=args.out, **given)
    delta = train_align(cfg)
    print(f"wrote {delta}; install it with: cp {delta} src/stepaudio/default_model/weights/")


def _run_train_evaluate(args: argparse.Namespace) -> None:
    from .default_model.assemble import ensure_default_model
    from .default_model import model_dir_or_default
    from .train.evaluate import evaluate, markdown, write_report

    model = model_dir_or_default(args.model)
    base = args.base_model or ensure_default_model(delta=None)
    report = evaluate(model, base, seed=args.seed, sound_items=args.sound_items,
                      whisper_reference=args.whisper_reference)
    write_report(report, args.json)
    print(markdown(report))
    print(f"per-item results: {args.json}", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stepaudio", description="Step-Audio-R1 audio reasoning models")
    parser.add_argument("--version", action="version", version=f"stepaudio {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_serve(sub)
    _add_chat(sub)
    _add_demo(sub)
    _add_generate(sub)
    _add_make_tiny(sub)
    _add_train(sub)
    add_eval(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(with_default_subcommand(sys.argv[1:] if argv is None else argv))
    try:
        args.func(args)
    except (ValueError, OSError) as e:  # every user-facing error type here derives from these
        print(f"stepaudio {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
