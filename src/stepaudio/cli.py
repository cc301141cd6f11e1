"""`stepaudio` command line: make-tiny, generate (serve, chat, demo, ... arrive with their issues)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import __version__


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
    p.add_argument("--model", required=True, type=Path, help="local checkpoint folder")
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
    from .pipeline import answer_audio_question
    from .text.chat_template import load_chat_template

    if args.audio is None and not args.prompt:
        raise ValueError("give --audio, --prompt or both")
    if args.max_tokens < 1:
        raise ValueError("--max-tokens must be at least 1")
    result = answer_audio_question(args.model, audio=args.audio, prompt=args.prompt, system=args.system,
                                   max_tokens=args.max_tokens, temperature=args.temperature, seed=args.seed,
                                   dtype=args.dtype, device=args.device, formula=args.audio_token_formula,
                                   template=load_chat_template(args.chat_template) if args.chat_template else None)
    print("── thinking ──")
    print(result.reasoning.strip("\n"))
    print("── answer ──")
    print(result.answer)
    print(f"[{result.prompt_tokens} prompt tokens ({result.audio_tokens} audio), {result.completion_tokens} "
          f"generated, finish: {result.finish_reason}]", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stepaudio", description="Step-Audio-R1 audio reasoning models")
    parser.add_argument("--version", action="version", version=f"stepaudio {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_make_tiny(sub)
    _add_generate(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
