"""`stepaudio --version`: what a bug report needs, in three lines: versions, devices, the default model's cache
(or the extra it needs)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from . import __version__
from .default_model.packages import locate_all


def version_report() -> str:
    """stepaudio and torch versions, the devices torch sees, and where the default model is (or will be) cached."""
    import torch

    from .default_model.assemble import default_model_dir

    if torch.cuda.is_available():
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        devices = f"cpu, cuda ({names}; pass --device cuda)"
    else:
        devices = "cpu (no CUDA device" + ("" if torch.version.cuda else "; this torch is a CPU build") + ")"
    model = default_model_dir()
    return "\n".join([f"stepaudio {__version__} (Python {sys.version.split()[0]}, torch {torch.__version__})",
                      f"devices: {devices}",
                      f"default model: {model} ({_default_model_state(model)})"])


def _default_model_state(model: Path) -> str:
    if (model / "config.json").is_file():
        return "assembled"
    try:
        locate_all()
    except EnvironmentError as e:  # without the default-model extra, or a damaged weight package
        return f"not assembled: {e}"
    return "not assembled yet: the first use builds it"


class VersionAction(argparse.Action):
    """--version: print `version_report()` and exit, like argparse's own version action."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, help: str | None = None) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        print(version_report())
        parser.exit()
