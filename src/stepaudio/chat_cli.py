"""`stepaudio chat`: talk to a Step-Audio model from the terminal, one question or a multi-turn session.

It always speaks the OpenAI API: with --api-base to a running server (ours or the official vLLM
recipe), with --model to a server it starts itself on a free loopback port. The thinking streams
dimmed, the answer plainly; long audio goes as one input_audio part per 25 s chunk.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, TextIO

from .cli_args import require_path
from .client import ServerError, list_models, split_stream, stream_chat, user_message
from .endpoint import check_endpoint, model_endpoint

DIM, RESET = "\x1b[2m", "\x1b[0m"
HELP = "commands: /audio FILE (attach to the next message), /reset (forget the history), /exit"


@dataclass
class ChatSession:
    api_base: str
    model: str
    options: dict[str, Any]
    api_key: str | None = None
    system: str | None = None
    server_splits_reasoning: bool | None = None
    history: list[dict[str, Any]] = field(default_factory=list)

    def ask(self, text: str, audio: str | None, out: TextIO) -> str:
        """Send one user turn with the history, print thinking and answer as they stream; returns the answer."""
        message = user_message(text, audio)
        system = [{"role": "system", "content": self.system}] if self.system else []
        payload = {"model": self.model, "messages": system + self.history + [message], **self.options}
        chunks = stream_chat(self.api_base, payload, api_key=self.api_key)
        answer = _print_stream(split_stream(chunks, self.server_splits_reasoning,
                                            starts_in_thinking=self.options.get("thinking") != "off"), out)
        self.history += [message, {"role": "assistant", "content": answer}]
        return answer


def _print_stream(pieces: Iterable[tuple[str, str]], out: TextIO) -> str:
    """Print thinking (dimmed on a terminal) under a header, then the answer under its own; return the answer."""
    dim = out.isatty()
    section, answer = None, ""
    for kind, text in pieces:
        if kind != section:
            if section is not None:
                out.write("\n")
            header = "── thinking ──" if kind == "thinking" else "── answer ──"
            out.write(f"{DIM}{header}{RESET}\n" if dim else f"{header}\n")
            section = kind
        out.write(f"{DIM}{text}{RESET}" if dim and kind == "thinking" else text)
        out.flush()
        if kind == "answer":
            answer += text
    out.write("\n")
    return answer


def _interactive(session: ChatSession, inp: TextIO, out: TextIO) -> None:
    out.write(f"{HELP}\n")
    audio = None
    while True:
        out.write("you> ")
        out.flush()
        line = inp.readline()
        if not line or line.strip() == "/exit":
            return
        text = line.strip()
        if text.startswith("/audio "):
            path = text.removeprefix("/audio ").strip()
            try:
                require_path(path, "audio file")
            except OSError as e:
                out.write(f"error: {e}\n")
                continue
            audio = path
            out.write(f"(audio {audio} goes with your next message)\n")
            continue
        if text == "/reset":
            session.history.clear()
            out.write("(history cleared)\n")
            continue
        if not text and audio is None:
            continue
        try:
            session.ask(text, audio, out)
        except BrokenPipeError:
            raise  # nobody reads the answers any more: `stepaudio chat` ends quietly
        except (ServerError, OSError, ValueError) as e:
            out.write(f"error: {e}\n")
        audio = None


def _sampling_options(args: argparse.Namespace) -> dict[str, Any]:
    options = {"max_tokens": args.max_tokens, "temperature": args.temperature, "top_p": args.top_p,
               "seed": args.seed, "max_thinking_tokens": args.max_thinking_tokens,
               "thinking": "off" if args.no_thinking else "on"}
    return {k: v for k, v in options.items() if v is not None}


def run_chat(args: argparse.Namespace, inp: TextIO | None = None, out: TextIO | None = None) -> None:
    """Check the arguments (before any model loads), reach the model, then one question or a session."""
    check_endpoint(args)
    require_path(args.audio, "audio file")
    inp, out = inp or sys.stdin, out or sys.stdout
    with model_endpoint(args) as (api_base, splits):
        names = list_models(api_base, args.api_key)
        session = ChatSession(api_base=api_base, model=names[0], options=_sampling_options(args),
                              api_key=args.api_key, system=args.system, server_splits_reasoning=splits)
        if args.text or args.audio:
            session.ask(args.text or "", args.audio, out)
            if not args.interactive:
                return
        _interactive(session, inp, out)
