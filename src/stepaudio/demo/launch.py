"""`stepaudio demo`: find the model (a running server, or a private one for --model or the default model),
then serve the page."""

from __future__ import annotations

import argparse
import tempfile
from contextlib import ExitStack
from pathlib import Path

from ..client import list_models
from ..endpoint import check_endpoint, model_endpoint
from ..extras import require_extra
from ..server.sockets import listening_socket


def run_demo(args: argparse.Namespace) -> None:
    """Serve the demo until Ctrl-C; errors (no model, busy port, server unreachable, gradio missing) are one
    line, and all but an unreachable server are found before a model loads."""
    check_endpoint(args)
    require_extra("demo", "the demo")
    listening_socket(args.host, args.port).close()  # gradio takes the port itself, after the model is loaded
    from .app import build_demo
    from .backend import Backend
    from .session import DEFAULT_AUDIO_BUDGET_SECONDS

    with ExitStack() as stack:
        api_base, splits = stack.enter_context(model_endpoint(args))
        backend = Backend(api_base, list_models(api_base, args.api_key)[0], args.api_key, splits)
        pictures = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="stepaudio-demo-")))
        demo = build_demo(backend, pictures, args.audio_budget_seconds or DEFAULT_AUDIO_BUDGET_SECONDS)
        print(f"stepaudio demo: {backend.model} via {api_base}; open http://{args.host}:{args.port}", flush=True)
        demo.queue().launch(server_name=args.host, server_port=args.port, allowed_paths=[str(pictures)],
                            show_error=False, quiet=True)
