"""Where `chat` and `demo` reach the model: a running server (--api-base) or a private one (--model)."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager

from .cli_args import require_device, require_path


def check_endpoint(args: argparse.Namespace) -> None:
    """Find what is wrong with --model / --device before anything loads (--api-base is checked as it is parsed,
    and answers for itself)."""
    if args.api_base is None:
        require_path(args.model, "model folder", folder=True)
        require_device(args.device)


@contextmanager
def model_endpoint(args: argparse.Namespace) -> Iterator[tuple[str, bool | None]]:
    """Yield (OpenAI API base, whether the server sends the thinking apart: True for our private server,
    None for a remote one, learnt from its stream). Uses args.api_base, or args.model (default: the
    built-in default model) with args.dtype, args.device and args.kv_cache_memory_gb."""
    if args.api_base is not None and args.model is not None:
        raise ValueError("give one of --api-base URL (a running server) and --model DIR (a checkpoint), not both")
    if args.api_base is not None:
        yield args.api_base, None
        return
    from .default_model import model_dir_or_default
    from .server.launcher import private_server  # torch and the engine only when a model runs here

    with private_server(model_dir_or_default(args.model), dtype=args.dtype, device=args.device,
                        kv_cache_memory_gb=args.kv_cache_memory_gb, quantization=args.quantization) as api_base:
        yield api_base, True
