"""Load ramp: 1 -> 64 concurrent streams against one `stepaudio serve`, past the point where it answers 429.

At each level `c`, c clients loop for `--seconds`: a streamed text request (or audio, with --audio-seconds),
and after a 429 a 0.1 s pause before the next try (clients that back off less than Retry-After, to keep
the queue full). Per level: completed requests per second, output tokens per second, TTFT / ITL / E2E
percentiles of the admitted requests, and the share of tries refused with 429. The server admits
--max-num-seqs running plus --max-queue waiting requests; past that it refuses, so the latency of the
admitted ones stays bounded however many clients push.

Reference, measured in the same run: the offline engine (`LLM.generate`, same checkpoint, batch
--max-num-seqs) on the same requests; each level's throughput is printed as a ratio of it.

    .venv/bin/python benchmarks/load_ramp.py --plot docs/load_ramp.png --out ramp.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch

from bench_serving import (add_server_options, free_port, offline_throughput, percentiles, readable_random_checkpoint,
                           start_server)
from load_driver import Outcome, one, request_body

BACKOFF_SECONDS = 0.1


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (/proc/PID/stat fields 14 and 15)."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def level(url: str, server_pid: int, clients: int, seconds: float, max_tokens: int,
                audio_seconds: float) -> dict:
    kind = "audio_stream" if audio_seconds > 0 else "text_stream"
    outcomes: list[Outcome] = []
    deadline = time.perf_counter() + seconds
    counter = iter(range(10**9))

    async def client(c: httpx.AsyncClient) -> None:
        while time.perf_counter() < deadline:
            out = await one(c, url, kind, next(counter), max_tokens, audio_seconds or 1.0)
            outcomes.append(out)
            if out.status == 429:
                await asyncio.sleep(BACKOFF_SECONDS)

    start, server_cpu, client_cpu = time.perf_counter(), cpu_seconds(server_pid), time.process_time()
    async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=clients)) as c:
        await asyncio.gather(*(client(c) for _ in range(clients)))
    duration = time.perf_counter() - start
    server_cpu, client_cpu = cpu_seconds(server_pid) - server_cpu, time.process_time() - client_cpu
    done = [o for o in outcomes if o.completed]
    refused = sum(1 for o in outcomes if o.status == 429)
    return {"streams": clients, "tries": len(outcomes), "completed": len(done), "refused_429": refused,
            "refused_share": refused / max(1, len(outcomes)),
            "unclean": sum(1 for o in outcomes if not o.clean or (o.status not in (200, 429))),
            "duration_s": duration, "request_throughput": len(done) / duration,
            "server_cores": server_cpu / duration, "client_cores": client_cpu / duration,
            "output_throughput": sum(o.output_tokens for o in done) / duration,
            "ttft_ms": percentiles([o.ttft for o in done]), "itl_ms": percentiles([x for o in done for x in o.itl]),
            "e2el_ms": percentiles([o.latency for o in done])}


def table(rows: list[dict], offline_rps: float) -> str:
    lines = ["| streams | tries | done | 429 share | req/s | × offline | tok/s | TTFT p50 / p99 ms | "
             "ITL p50 / p99 ms | E2E p50 / p99 ms | cores: server / client |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        t, i, e = r["ttft_ms"], r["itl_ms"], r["e2el_ms"]
        lines.append(f"| {r['streams']} | {r['tries']} | {r['completed']} | {r['refused_share']:.0%} | "
                     f"{r['request_throughput']:.2f} | {r['request_throughput'] / offline_rps:.2f}× | "
                     f"{r['output_throughput']:.0f} | {t['p50']:.0f} / {t['p99']:.0f} | "
                     f"{i['p50']:.1f} / {i['p99']:.1f} | "
                     f"{e['p50']:.0f} / {e['p99']:.0f} | {r['server_cores']:.2f} / {r['client_cores']:.2f} |")
    return "\n".join(lines)


def plot(rows: list[dict], offline_rps: float, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [r["streams"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    axes[0].plot(x, [r["request_throughput"] for r in rows], "o-", label="served")
    axes[0].axhline(offline_rps, color="gray", ls="--", label="offline engine, same batch")
    axes[0].set(title="completed requests / s", xlabel="concurrent streams")
    axes[0].legend()
    for key, name, style in (("ttft_ms", "TTFT", "o-"), ("e2el_ms", "E2E", "s-")):
        axes[1].plot(x, [r[key]["p50"] for r in rows], style, label=f"{name} p50")
        axes[1].plot(x, [r[key]["p99"] for r in rows], style, alpha=0.5, label=f"{name} p99")
    axes[1].set(title="latency of admitted requests (ms)", xlabel="concurrent streams", yscale="log")
    axes[1].legend(fontsize=8)
    axes[2].bar([str(v) for v in x], [100 * r["refused_share"] for r in rows])
    axes[2].set(title="tries refused with 429 (%)", xlabel="concurrent streams")
    for ax in axes[:2]:
        ax.set_xscale("log", base=2)
        ax.set_xticks(x, [str(v) for v in x])
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, help="checkpoint folder (default: a random one, hidden 256, 4 layers)")
    p.add_argument("--streams", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    p.add_argument("--seconds", type=float, default=20.0, help="per level")
    p.add_argument("--max-num-seqs", type=int, default=8)
    p.add_argument("--max-queue", type=int, default=16)
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--audio-seconds", type=float, default=0.0, help="0: text requests")
    add_server_options(p)
    p.add_argument("--threads", type=int, help="torch threads for the server and the reference (default: torch's); "
                                                "1 on a machine shared with other jobs (2 were 17x slower there)")
    p.add_argument("--out", type=Path)
    p.add_argument("--plot", type=Path)
    args = p.parse_args()
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the server process
        torch.set_num_threads(args.threads)  # the offline reference here
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model or readable_random_checkpoint(Path(tmp) / "model", 256, 4)
        port = free_port()
        options = argparse.Namespace(**{**vars(args), "concurrency": [args.max_num_seqs]})
        server = start_server(model_dir, port, options, extra=("--max-queue", str(args.max_queue)))
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        rows = []
        try:
            for clients in args.streams:
                rows.append(asyncio.run(level(url, server.pid, clients, args.seconds, args.max_tokens,
                                              args.audio_seconds)))
                print(f"{clients} streams: {rows[-1]['request_throughput']:.2f} req/s, "
                      f"{rows[-1]['refused_share']:.0%} refused", file=sys.stderr)
        finally:
            server.send_signal(signal.SIGINT)
            server.wait(30)
        kind = "audio_stream" if args.audio_seconds > 0 else "text_stream"
        conversations = [request_body(kind, i, args.max_tokens, args.audio_seconds or 1.0)["messages"]
                         for i in range(4 * args.max_num_seqs)]
        offline_rps = offline_throughput(model_dir, conversations, args.max_num_seqs, args.max_tokens, args)
    title = (f"{args.model or 'random checkpoint, hidden 256, 4 layers'}; max_num_seqs {args.max_num_seqs}, "
             f"max_queue {args.max_queue}; {args.max_tokens} output tokens; {args.seconds:g} s per level; "
             f"torch threads {torch.get_num_threads()}")
    print(title)
    print(table(rows, offline_rps))
    if args.out:
        args.out.write_text(json.dumps({"offline_rps": offline_rps, "levels": rows}, indent=2))
    if args.plot:
        plot(rows, offline_rps, args.plot, title)


if __name__ == "__main__":
    main()
