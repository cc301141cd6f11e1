"""`stepaudio train mgrd --config run.toml`: argument checks here, the work in `pipeline` (imported late)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from ..device import DEVICES  # torch-free: the parser is built for every `stepaudio` command


def add_mgrd_parser(steps: argparse._SubParsersAction) -> None:
    m = steps.add_parser("mgrd", help="MGRD: self-distillation, GRPO and self-cognition DPO on grounded audio tasks",
                         description="One config file per run (TOML, YAML or JSON); docs/MGRD.md lists every "
                                     "setting. Rerun the same command to resume. Data-parallel: "
                                     "torchrun --nproc_per_node N -m stepaudio train mgrd --config run.toml")
    m.add_argument("--config", type=Path, required=True, help="the run's config file")
    m.add_argument("--out", type=Path, help="run folder (default: the config's `out`)")
    m.add_argument("--device", choices=DEVICES,
                   help="where the policy trains (default: the config's device, auto unless set: CUDA when torch "
                        "sees a GPU; under torchrun each process on the GPU of its LOCAL_RANK)")
    m.add_argument("--no-progress", action="store_true", help="no progress bars")
    m.set_defaults(func=run_mgrd_command)


def run_mgrd_command(args: argparse.Namespace) -> None:
    from ..device import training_device
    from .config import load_config  # light: no torch model code

    overrides = {"out": str(args.out.resolve())} if args.out else {}
    if args.device:
        overrides["device"] = args.device
    try:
        cfg = load_config(args.config, overrides)
        cfg.check_world_size(int(os.environ.get("WORLD_SIZE", "1")))  # torchrun's
        training_device(cfg.device)  # no GPU here, or fewer GPUs than torchrun's processes
    except (OSError, ValueError, TypeError) as e:
        print(f"stepaudio train mgrd: {e}", file=sys.stderr)
        raise SystemExit(2)
    from .pipeline import run_mgrd

    summary = run_mgrd(cfg, progress=not args.no_progress)
    print(json.dumps(summary["tasks"], indent=1))
    print(f"run folder: {cfg.out} (summary.json)", file=sys.stderr)
