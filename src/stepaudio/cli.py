"""`stepaudio` command line: serve, chat, demo, generate, make-tiny, train, eval."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .about import VersionAction
from .cli_args import (Parser, api_base, non_negative_float, non_negative_int, port_number, positive_float,
                       positive_int, probability, require_device, require_path)
from .evaluation.cli import add_eval, with_default_subcommand
from .extras import require_extra
from .quant.cli import add_quantization_option, add_quantize
from .serve_cli import add_serve
from .train.device import DEVICES

DTYPES = ["bfloat16", "float16", "float32"]
SIGPIPE_EXIT = 141  # 128 + SIGPIPE: what a shell reports for a Unix tool whose reader went away


def _add_make_tiny(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("make-tiny", help="write a random tiny checkpoint (for tests)",
                       description="Write a random small Step-Audio checkpoint in the official on-disk format.")
    p.add_argument("out_dir", type=Path, help="folder to write")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    p.add_argument("--shards", type=positive_int, default=2,
                   help="number of safetensors shards (1 = model.safetensors)")
    p.add_argument("--dtype", default="bfloat16", choices=DTYPES, help="dtype of the weights")
    p.add_argument("--hidden-size", type=positive_int, default=64, help="decoder width")
    p.add_argument("--layers", type=positive_int, default=2, help="decoder layers")
    p.add_argument("--tie-word-embeddings", action="store_true", help="share the input and output embeddings")
    p.set_defaults(func=_run_make_tiny)


def _run_make_tiny(args: argparse.Namespace) -> None:
    from .model.tiny import write_tiny_checkpoint

    out = write_tiny_checkpoint(args.out_dir, seed=args.seed, num_shards=args.shards, dtype=args.dtype,
                                tie_word_embeddings=args.tie_word_embeddings, hidden=args.hidden_size,
                                layers=args.layers)
    print(f"wrote a random tiny Step-Audio checkpoint to {out}")


def _add_talk(sub: argparse._SubParsersAction) -> None:
    from .realtime.pacing import DEFAULT_SCHEDULE, SCHEDULES, Pacing

    defaults = Pacing()
    p = sub.add_parser("talk", help="one spoken turn over /v1/realtime: think while speaking",
                       description="Send a spoken question to /v1/realtime, save the spoken answer, print the "
                                   "timeline. See docs/REALTIME.md.")
    p.add_argument("--audio", type=Path, required=True, help="the spoken question (wav/flac/ogg/mp3/webm/m4a)")
    p.add_argument("--out", type=Path, required=True, help="where to write the spoken answer (.wav, 24 kHz)")
    _add_endpoint_options(p, "this talk")
    p.add_argument("--schedule", choices=SCHEDULES, default=DEFAULT_SCHEDULE, help="when the two brains run")
    p.add_argument("--think-segment-tokens", type=positive_int, default=defaults.think_segment_tokens,
                   help="thinking tokens per thought segment")
    p.add_argument("--response-segment-tokens", type=positive_int, default=defaults.response_segment_tokens,
                   help="answer tokens written per segment")
    p.add_argument("--max-thinking-tokens", type=positive_int, default=defaults.max_thinking_tokens,
                   help="the thinking stream's budget")
    p.add_argument("--max-response-tokens", type=positive_int, default=defaults.max_response_tokens,
                   help="spoken answer tokens at most")
    p.add_argument("--temperature", type=non_negative_float, default=0.0, help="0 = greedy")
    p.add_argument("--seed", type=int, help="sampling seed (default: random)")
    p.set_defaults(func=_run_talk)


def _run_talk(args: argparse.Namespace) -> None:
    from .realtime.talk import run_talk

    run_talk(args)


def _add_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="answer one question about an audio file, no server",
                       description="Load the model, answer one question about an audio file, print the thinking "
                                   "and the answer.")
    p.add_argument("--model", type=Path, help="local checkpoint folder (default: the built-in default model)")
    p.add_argument("--audio", type=Path,
                   help="wav/flac/ogg/mp3/webm/m4a file, split into 25 s chunks (default: none, a text question)")
    p.add_argument("--prompt", default="", help="text sent with the audio (default: none)")
    p.add_argument("--system", help="system prompt (default: none)")
    p.add_argument("--max-tokens", type=positive_int, default=512, help="tokens to generate at most")
    p.add_argument("--temperature", type=non_negative_float, default=0.0, help="0 = greedy")
    p.add_argument("--seed", type=int, help="sampling seed (default: random)")
    p.add_argument("--dtype", choices=DTYPES, help="weights' dtype (default: the checkpoint's)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    add_quantization_option(p)
    p.add_argument("--chat-template",
                   help="Jinja file or template string (default: the checkpoint's, else the official R1 template)")
    p.add_argument("--audio-token-formula", default="vllm", choices=["vllm", "hf"],
                   help="vllm (as the served R1 numbers) or hf (L-2, the transformers path)")
    p.set_defaults(func=_run_generate)


def _run_generate(args: argparse.Namespace) -> None:
    from .text.chat_template import load_chat_template

    if args.audio is None and not args.prompt:
        raise ValueError("give --audio, --prompt or both")
    require_path(args.model, "model folder", folder=True)
    require_path(args.audio, "audio file")
    require_device(args.device)
    template = load_chat_template(args.chat_template) if args.chat_template else None
    from .default_model import model_dir_or_default
    from .pipeline import answer_audio_question

    result = answer_audio_question(model_dir_or_default(args.model), audio=args.audio, prompt=args.prompt,
                                   system=args.system, max_tokens=args.max_tokens, temperature=args.temperature,
                                   seed=args.seed, dtype=args.dtype, device=args.device, quantization=args.quantization,
                                   formula=args.audio_token_formula, template=template)
    print("── thinking ──")
    print(result.reasoning.strip("\n"))
    print("── answer ──")
    print(result.answer)
    print(f"[{result.prompt_tokens} prompt tokens ({result.audio_tokens} audio), {result.completion_tokens} "
          f"generated, finish: {result.finish_reason}]", file=sys.stderr)


def _add_chat(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("chat", help="chat in the terminal, with a server or a local model",
                       description="Streams the thinking (dimmed) and the answer. Without TEXT or --audio, or "
                                   "with --interactive, it keeps a multi-turn conversation.")
    p.add_argument("text", nargs="?", default="", help="the message (with --audio: the question about it)")
    _add_endpoint_options(p, "this chat")
    p.add_argument("--audio", help="audio file sent with the message, cut into 25 s parts (default: none)")
    p.add_argument("--interactive", "-i", action="store_true", help="keep chatting after TEXT/--audio")
    p.add_argument("--system", help="system prompt (default: none)")
    p.add_argument("--max-tokens", type=positive_int, default=2048, help="tokens per answer at most, thinking included")
    p.add_argument("--temperature", type=non_negative_float, default=0.7,
                   help="0 = greedy (the official examples use 0.7)")
    p.add_argument("--top-p", type=probability, help="nucleus sampling (default: the server's, 1.0 here)")
    p.add_argument("--seed", type=int, help="sampling seed (default: random)")
    p.add_argument("--max-thinking-tokens", type=non_negative_int,
                   help="cap the thinking; the model then answers (default: no cap)")
    p.add_argument("--no-thinking", action="store_true", help="answer without a <think> block")
    p.set_defaults(func=_run_chat)


def _add_endpoint_options(p: argparse.ArgumentParser, purpose: str) -> None:
    """--api-base or --model (a private server in this process, with its own loading options)."""
    where = p.add_mutually_exclusive_group()
    where.add_argument("--api-base", type=api_base,
                       help="OpenAI API base of a running server, e.g. http://127.0.0.1:9999/v1 (/v1 may be left out; "
                            "default: none, see --model)")
    where.add_argument("--model", type=Path, help=f"checkpoint folder: start a private server for {purpose} "
                                                  "(default, when neither is given: the built-in default model)")
    p.add_argument("--api-key", help="key of the server at --api-base (default: none)")
    p.add_argument("--dtype", choices=DTYPES, help="with --model: weights' dtype (default: the checkpoint's)")
    p.add_argument("--device", default="cpu", help="with --model: cpu, cuda, ...")
    add_quantization_option(p)
    p.add_argument("--kv-cache-memory-gb", type=positive_float, default=1.0, help="with --model: KV cache size")


def _run_chat(args: argparse.Namespace) -> None:
    from .chat_cli import run_chat

    run_chat(args)


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="web demo in the browser (Gradio)",
                       description="Chat with audio and text in a browser: live thinking, sliders, Stop. "
                                   "See docs/DEMO.md.")
    _add_endpoint_options(p, "the demo")
    p.add_argument("--host", default="127.0.0.1", help="address the page listens on (0.0.0.0: every interface)")
    p.add_argument("--port", type=port_number, default=7860, help="port the page listens on")
    p.add_argument("--audio-budget-seconds", type=positive_float,
                   help="audio one conversation may hold (default: upstream's 10 MB of 16 kHz WAV, 327.7 s)")
    p.set_defaults(func=_run_demo)


def _run_demo(args: argparse.Namespace) -> None:
    from .demo.launch import run_demo

    run_demo(args)


def _align_defaults() -> dict[str, object]:
    """AlignConfig's defaults, for `train align --help` only (the import pulls in torch)."""
    from dataclasses import MISSING, fields

    from .train.align import AlignConfig

    return {f.name: f.default for f in fields(AlignConfig) if f.default is not MISSING}


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train the default model's audio alignment; evaluate",
                       description="See docs/DEFAULT_MODEL.md for the recipe, its cost and its results.")
    steps = p.add_subparsers(dest="train_command", metavar="COMMAND", title="commands")
    a = steps.add_parser("align", help="train adaptor + decoder LoRA on synthesised think-format examples "
                                       "(resumes from OUT if it holds a run)", help_defaults=_align_defaults)
    a.add_argument("--out", type=Path, required=True, help="run folder: state, loss log, align_delta.safetensors")
    # Defaults live in AlignConfig (help_defaults shows them); an option left out keeps it.
    a.add_argument("--steps", type=positive_int, help="decoder-stage steps")
    a.add_argument("--ctc-clips", type=non_negative_int,
                   help="spoken clips for the adaptor's CTC warm-up before the decoder trains (0: skip it)")
    a.add_argument("--ctc-epochs", type=non_negative_int, help="passes of the CTC warm-up over its clips")
    a.add_argument("--listening-drill-steps", type=non_negative_int,
                   help="first steps on transcription of random word lists only (teaches the adaptor to listen)")
    a.add_argument("--generated-questions", type=non_negative_int,
                   help="questions the base decoder writes (answers self-distilled) for spoken QA items")
    a.add_argument("--generated-sentences", type=non_negative_int,
                   help="sentences the base decoder writes for transcription")
    a.add_argument("--arithmetic-questions", type=non_negative_int, help="seeded spoken sums and differences")
    a.add_argument("--batch-size", type=positive_int, help="examples per step")
    a.add_argument("--lr-adapter", type=positive_float, help="adaptor learning rate")
    a.add_argument("--lr-lora", type=positive_float, help="LoRA learning rate")
    a.add_argument("--lora-rank", type=positive_int, help="LoRA rank (alpha is twice the rank)")
    a.add_argument("--encoder-lora-blocks", type=non_negative_int,
                   help="also train LoRA pairs on this many top Whisper encoder blocks (0: encoder frozen)")
    a.add_argument("--kd-weight", type=non_negative_float,
                   help="weight of distillation from the model reading each spoken example's words as text "
                        "(KL at the target tokens; 0: off)")
    a.add_argument("--seed", type=int, help="seed of the data and the initialisation")
    a.add_argument("--save-every", type=positive_int, help="steps between resumable checkpoints")
    a.add_argument("--threads", type=positive_int, help="torch CPU threads (default: torch's choice)")
    a.add_argument("--init-delta", type=Path,
                   help="start from this delta's adaptor and LoRA, e.g. the committed one (default: from scratch)")
    a.add_argument("--decoder-dtype", choices=("auto", "bfloat16", "float32"),
                   help="dtype of the frozen decoder; auto: bf16 where oneDNN has bf16 kernels, else fp32")
    a.add_argument("--device", choices=DEVICES,
                   help="where the decoder stage trains (auto: CUDA when torch sees a GPU); the teacher and the "
                        "CTC warm-up run on the CPU")
    a.set_defaults(func=_run_train_align)
    e = steps.add_parser("evaluate", help="held-out report: speech vs text accuracy, repeat WER, sound tasks, speed")
    e.add_argument("--model", type=Path, help="model folder (default: the built-in default model)")
    e.add_argument("--base-model", type=Path,
                   help="model for the 'before training' text accuracy (default: the untrained base assembly)")
    e.add_argument("--json", type=Path, default=Path("default_model_eval.json"), help="per-item results")
    e.add_argument("--seed", type=int, default=1, help="seed of the held-out items")
    e.add_argument("--sound-items", type=positive_int, default=20, help="held-out items per sound task")
    e.add_argument("--families", help="voice families that speak the held-out questions, each reported alone "
                                      "(comma-separated; default: every family, held-out ones first; "
                                      "docs/DEFAULT_MODEL.md lists them)")
    e.add_argument("--multiturn-per-kind", type=non_negative_int, default=8,
                   help="held-out multi-turn items per follow-up kind (0: none)")
    e.add_argument("--multiturn-family", default="pico", help="voice family that speaks the multi-turn items")
    e.add_argument("--no-whisper-reference", dest="whisper_reference", action="store_false",
                   help="skip the cascade reference (the decoder given Whisper-base's own transcripts; "
                        "needs ctranslate2)")
    e.set_defaults(func=_run_train_evaluate)
    from .train.mgrd.cli import add_mgrd_parser

    add_mgrd_parser(steps)


ALIGN_OPTIONS = ("steps", "ctc_clips", "ctc_epochs", "listening_drill_steps", "generated_questions",
                 "generated_sentences", "arithmetic_questions", "batch_size", "lr_adapter", "lr_lora", "lora_rank",
                 "encoder_lora_blocks", "kd_weight", "seed", "save_every", "threads", "init_delta", "decoder_dtype",
                 "device")


def _run_train_align(args: argparse.Namespace) -> None:
    require_path(args.init_delta, "--init-delta")
    require_extra("train", "training")
    from .train.align import AlignConfig, train_align
    from .train.device import training_device

    given = {name: getattr(args, name) for name in ALIGN_OPTIONS if getattr(args, name) is not None}
    if "lora_rank" in given:
        given["lora_alpha"] = 2.0 * given["lora_rank"]
    cfg = AlignConfig(out=args.out, **given)
    training_device(cfg.device)  # a device that is not here is refused before the base model loads
    delta = train_align(cfg)
    print(f"wrote {delta}; install it with: cp {delta} src/stepaudio/default_model/weights/")


def _run_train_evaluate(args: argparse.Namespace) -> None:
    require_path(args.model, "model folder", folder=True)
    require_path(args.base_model, "base model folder", folder=True)
    from .train.speech import FAMILIES, REPORT_FAMILIES

    families = tuple(f for f in args.families.split(",") if f) if args.families else REPORT_FAMILIES
    unknown = [f for f in families + (args.multiturn_family,) if f not in FAMILIES]
    if unknown:
        raise ValueError(f"unknown voice family {unknown[0]!r}; known: {', '.join(FAMILIES)}")
    require_extra("train", "the default model's evaluation")
    from .default_model import model_dir_or_default
    from .default_model.assemble import ensure_default_model
    from .train.evaluate import evaluate, markdown, write_report

    model = model_dir_or_default(args.model)
    base = args.base_model or ensure_default_model(delta=None)
    report = evaluate(model, base, seed=args.seed, sound_items=args.sound_items,
                      whisper_reference=args.whisper_reference, families=families,
                      multiturn_family=args.multiturn_family, multiturn_per_kind=args.multiturn_per_kind)
    write_report(report, args.json)
    print(markdown(report))
    print(f"per-item results: {args.json}", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="stepaudio", description="Step-Audio-R1 audio reasoning models: serve them, chat with "
                                                  "them, try them in a browser, evaluate and train them.",
                    epilog="Run 'stepaudio COMMAND --help' for a command's flags.")
    parser.add_argument("--version", action=VersionAction,
                        help="print the versions of stepaudio and torch, the devices, and where the default "
                             "model is cached")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    add_serve(sub)
    _add_chat(sub)
    _add_demo(sub)
    _add_generate(sub)
    _add_make_tiny(sub)
    _add_talk(sub)
    add_quantize(sub)
    _add_train(sub)
    add_eval(sub)
    return parser


def parse(argv: list[str]) -> argparse.Namespace:
    """The arguments, or exit 2 with the usage of the (sub)command they were meant for."""
    args, unknown = build_parser().parse_known_args(with_default_subcommand(argv))
    if unknown:
        args.parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    if not hasattr(args, "func"):  # `stepaudio` or `stepaudio train` alone: what there is to run
        args.parser.print_help()
        return 0
    try:
        args.func(args)
    except BrokenPipeError:  # stdout closed early (`stepaudio chat ... | head`): end quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes
        return SIGPIPE_EXIT
    except (ValueError, OSError) as e:  # every user-facing error type here derives from these
        print(f"stepaudio {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
