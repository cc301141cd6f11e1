"""What every `stepaudio` command shares on its command line: help that shows each flag's default, value types
that refuse a bad value while the arguments are parsed, and the file checks made before anything loads.

A mistake should cost the user no waiting: argparse's types catch bad values (exit 2, with the command's
usage), and `require_path` catches missing files and folders (exit 1, one line) before a model loads.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .client import api_base_url


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's defaults-in-help style, without "(default: None)" (or an empty string or list): the help of
    such a flag says itself what leaving it out means; a switch (--x, no value) is off unless given.
    Subcommands are listed one a line, without a "COMMAND" header."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default in ("", []) or action.nargs == 0:
            return action.help
        return super()._get_help_string(action)

    def _format_action(self, action: argparse.Action) -> str:
        if isinstance(action, argparse._SubParsersAction):
            return "".join(self._format_action(command) for command in action._get_subactions())
        return super()._format_action(action)


class Parser(argparse.ArgumentParser):
    """An ArgumentParser (and, through add_subparsers, every subcommand's) with `HelpFormatter`.

    `help_defaults` names defaults that live elsewhere (a config dataclass behind a heavy import): they are
    shown in --help, read only when the help is printed. Each parser records itself as `args.parser`, so the
    innermost subcommand's parser is the one that reports a problem with the arguments.
    """

    def __init__(self, *args: Any, help_defaults: Callable[[], dict[str, object]] | None = None,
                 **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)
        self._help_defaults = help_defaults
        self.set_defaults(parser=self)

    def format_help(self) -> str:
        if self._help_defaults is not None:
            defaults = self._help_defaults()
            for action in self._actions:
                if action.default is None and defaults.get(action.dest) is not None and action.help:
                    action.help += f" (default: {defaults[action.dest]})"
            self._help_defaults = None
        return super().format_help()


def _checked(convert: Callable[[str], Any], ok: Callable[[Any], bool], rule: str) -> Callable[[str], Any]:
    """An argparse type: `convert` the text, then refuse values for which `ok` is false, saying `rule`."""

    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{rule}, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"{rule}, got {text}")
        return value

    parse.__name__ = rule
    return parse


positive_int = _checked(int, lambda v: v >= 1, "must be a whole number of at least 1")
non_negative_int = _checked(int, lambda v: v >= 0, "must be a whole number of at least 0")
positive_float = _checked(float, lambda v: v > 0, "must be a number above 0")
non_negative_float = _checked(float, lambda v: v >= 0, "must be a number of at least 0")
probability = _checked(float, lambda v: 0 < v <= 1, "must be a number in (0, 1]")
port_number = _checked(int, lambda v: 0 <= v <= 65535, "must be a port number from 0 to 65535")


def api_base(text: str) -> str:
    """--api-base / --server: an http(s) URL; a bare server address gets the /v1 every OpenAI server uses."""
    try:
        return api_base_url(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def require_path(path: str | Path | None, what: str, *, folder: bool = False) -> None:
    """Stop (one line, exit 1) when a file or folder the command needs is not there, before anything loads."""
    if path is None:
        return
    if not Path(path).exists():
        raise FileNotFoundError(f"{what} {path} does not exist")
    if Path(path).is_dir() != folder:
        raise FileNotFoundError(f"{what} {path} is not a {'folder' if folder else 'file'}")


def require_device(device: str) -> None:
    """Stop (one line, exit 1) when torch cannot use `device` here, before a model is loaded onto it."""
    import torch  # only commands that run a model here call this

    try:
        wanted = torch.device(device)
    except RuntimeError:
        raise ValueError(f"--device {device}: not a device torch knows (cpu, cuda, cuda:1, mps, ...)") from None
    if wanted.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            build = "" if torch.version.cuda else f"; torch {torch.__version__} is a CPU build"
            raise ValueError(f"--device {device}: no CUDA device here{build}")
        if wanted.index is not None and wanted.index >= count:
            raise ValueError(f"--device {device}: only {count} CUDA device(s) here (cuda:0 to cuda:{count - 1})")
