"""`stepaudio eval MANIFEST …` and `stepaudio eval make-synthetic …`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..cli_args import (api_base, non_negative_float, non_negative_int, positive_float, positive_int, probability,
                        require_device, require_path)
from ..extras import require_extra
from ..quant.cli import add_quantization_option

SUBCOMMANDS = ("run", "make-synthetic")
PLOT_NAME = "accuracy_vs_reasoning_tokens.png"


def add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="score a model on an audio benchmark; thinking sweeps",
                       description="stepaudio eval MANIFEST [options] runs an evaluation (the 'run' word is "
                                   "optional); stepaudio eval make-synthetic --out DIR writes an offline benchmark. "
                                   "See docs/EVALUATION.md.")
    steps = p.add_subparsers(dest="eval_command", metavar="{MANIFEST,make-synthetic}", title="commands")
    r = steps.add_parser("run", help="evaluate MANIFEST (the default subcommand)")
    r.add_argument("manifest", type=Path, help="JSONL/JSON manifest; audio paths are relative to its folder")
    r.add_argument("--layout", default="auto", help="auto, jsonl, mmau, mmar, bba or spoken-mqa")
    r.add_argument("--category-field",
                   help="group the summary by this field of the manifest records (default: no grouping)")
    r.add_argument("--limit", type=positive_int, help="only the first N items (default: all)")
    target = r.add_mutually_exclusive_group()
    target.add_argument("--server", metavar="URL", type=api_base,
                        help="OpenAI-compatible API base, e.g. http://localhost:8000/v1 (/v1 may be left out; "
                             "default: none, see --model)")
    target.add_argument("--model", type=Path, help="model folder run in-process (default: the built-in default model)")
    r.add_argument("--served-model", help="model name sent to the server (default: the first it lists)")
    r.add_argument("--api-key", help="key of the server (default: none)")
    r.add_argument("--dtype", choices=["bfloat16", "float16", "float32"],
                   help="in-process dtype (default: the checkpoint's)")
    r.add_argument("--device", default="cpu", help="in-process device")
    add_quantization_option(r)
    r.add_argument("--out", type=Path, help="results folder (default: eval_<manifest name>)")
    r.add_argument("--concurrency", type=positive_int, default=8, help="requests in flight (in-process: batch size)")
    r.add_argument("--retries", type=non_negative_int, default=5,
                   help="retries with backoff on 429, 5xx and lost connections")
    r.add_argument("--timeout", type=positive_float, default=600.0, help="seconds per request")
    r.add_argument("--max-tokens", type=positive_int, default=4096, help="upstream scripts use 32000")
    r.add_argument("--temperature", type=non_negative_float, default=0.7, help="0 = greedy; upstream uses 0.7")
    r.add_argument("--top-p", type=probability, help="nucleus sampling (default: the server's)")
    r.add_argument("--repetition-penalty", type=positive_float,
                   help="upstream uses 1.07 for MMAR, 1.0 elsewhere (default: the server's)")
    r.add_argument("--seed", type=int, help="sampling seed (default: random)")
    r.add_argument("--thinking-budgets", default="inf",
                   help="comma list of reasoning-token caps, e.g. 0,64,256,1024,inf (0: no thinking, inf: no cap)")
    r.add_argument("--judge-url", type=api_base,
                   help="OpenAI-compatible API base of an LLM judge for open answers (default: none)")
    r.add_argument("--judge-model", help="the judge's model name (default: the first it lists)")
    r.add_argument("--judge-api-key", help="key of the judge's server (default: none)")
    r.add_argument("--judge-all", action="store_true", help="judge every answer, not only open ones")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    r.set_defaults(func=run_eval_command)
    m = steps.add_parser("make-synthetic", help="write a seeded offline benchmark: sounds, rhythm, spoken arithmetic")
    m.add_argument("--out", type=Path, required=True, help="folder for audio/ and manifest.jsonl")
    m.add_argument("--n-per-task", type=positive_int, default=20, help="items per task")
    m.add_argument("--seed", type=int, default=0, help="seed of the items")
    m.add_argument("--tasks", help="comma list of tasks (default: all)")
    m.set_defaults(func=make_synthetic_command)


def with_default_subcommand(argv: list[str]) -> list[str]:
    """`stepaudio eval MANIFEST …` means `stepaudio eval run MANIFEST …`."""
    if len(argv) >= 2 and argv[0] == "eval" and argv[1] not in SUBCOMMANDS + ("-h", "--help"):
        return ["eval", "run", *argv[1:]]
    return argv


def _judge(args: argparse.Namespace):
    if not args.judge_url:
        if args.judge_all:
            raise ValueError("--judge-all needs --judge-url")
        return None
    from ..client import list_models
    from .judge import Judge

    return Judge(args.judge_url, args.judge_model or list_models(args.judge_url, args.judge_api_key)[0],
                 args.judge_api_key, args.timeout)


def run_eval_command(args: argparse.Namespace) -> None:
    from .manifest import read_manifest
    from .report import plot_sweep, summarize, sweep_markdown, table
    from .runner import InProcessBackend, ResultStore, Sampling, ServerBackend, parse_budgets, run_eval

    require_path(args.model, "model folder", folder=True)
    if not args.server:
        require_device(args.device)
    budgets = parse_budgets(args.thinking_budgets)
    if len(budgets) > 1:
        require_extra("plot", "a thinking-budget sweep's plot")
    items = read_manifest(args.manifest, args.layout, args.category_field)[:args.limit]
    judge = _judge(args)
    out = args.out or Path(f"eval_{args.manifest.stem}")
    store = ResultStore(out / "results.jsonl")
    if args.server:
        backend = ServerBackend(args.server, args.served_model, args.api_key, args.timeout, args.retries)
    else:
        from ..default_model import model_dir_or_default

        backend = InProcessBackend.from_dir(model_dir_or_default(args.model), args.dtype, args.device,
                                            args.quantization)
    sampling = Sampling(args.max_tokens, args.temperature, args.top_p, args.repetition_penalty, args.seed)
    wanted = {(item.id, b) for item in items for b in ("inf" if x is None else x for x in budgets)}
    records = [r for r in run_eval(items, backend, store, budgets, sampling, args.concurrency, judge,
                                   args.judge_all, not args.no_progress) if (r["id"], r["budget"]) in wanted]
    rows = summarize(records)
    title = f"{args.manifest.parent.name}/{args.manifest.name}: accuracy against thinking budget"
    plot = None
    if len(budgets) > 1:
        plot = plot_sweep(rows, out / PLOT_NAME, title)
    report = sweep_markdown(rows, title, plot.name if plot else None) + "\n## Per category\n\n" + table(rows) + "\n"
    (out / "report.md").write_text(report)
    print(table(rows))
    errors = sum(r.errors for r in rows if r.category == "overall")
    if errors:
        print(f"stepaudio eval: {errors} requests failed (see 'error' in {store.path}); rerun to retry them",
              file=sys.stderr)
    print(f"results: {store.path}  report: {out / 'report.md'}" + (f"  plot: {plot}" if plot else ""),
          file=sys.stderr)


def make_synthetic_command(args: argparse.Namespace) -> None:
    from .synthetic import TASKS, make_synthetic

    tasks = [t.strip() for t in args.tasks.split(",")] if args.tasks else TASKS
    manifest = make_synthetic(args.out, args.n_per_task, args.seed, tasks)
    print(f"wrote {manifest}; run it with: stepaudio eval {manifest}")
