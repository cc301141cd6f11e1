"""Serving benchmark: streamed chat completions with audio at 1, 8 and 32 concurrent streams, over loopback.

Metrics follow vLLM's serving benchmark (`vllm bench serve`): TTFT is the time from sending a request
to its first chunk with choices; ITL the gaps between later chunks, pooled over requests; TPOT
(latency - TTFT) / (output tokens - 1) per request; E2EL the whole request; request throughput the
completed requests over the level's wall time. The server runs as its own process (`stepaudio serve`),
so the load generator does not share its interpreter.

Reference, measured in the same run: the offline engine (`LLM.chat`, same checkpoint, same requests,
max_num_seqs = the concurrency) in this process. The ratio server / offline is what HTTP, JSON, SSE
and the async engine loop cost.

Bounded: a fixed number of requests per level and a time limit per level; loopback only.

    .venv/bin/python benchmarks/bench_serving.py                 # random small checkpoint, CPU
    .venv/bin/python benchmarks/bench_serving.py --model DIR --device cuda --dtype bfloat16
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
from safetensors.torch import load_file, save_file

from stepaudio.client import wav_bytes
from stepaudio.engine.llm import LLM
from stepaudio.engine.sampling import SamplingParams
from stepaudio.model.tiny import write_tiny_checkpoint
from stepaudio.text.tokenizer import StepTokenizer

MODEL = "bench"
QUESTION = "Listen to the recording and describe what you hear."


@dataclass
class Result:
    ok: bool = False
    ttft: float = 0.0
    latency: float = 0.0
    itl: list[float] = field(default_factory=list)
    output_tokens: int = 0


def audio_message(index: int, seconds: float) -> list[dict]:
    """A distinct clip per request (noise with its own seed), so no request hits another's caches."""
    rng = np.random.default_rng(index)
    wav = (0.1 * rng.standard_normal(int(seconds * 16000))).astype(np.float32)
    part = {"type": "input_audio", "input_audio": {"data": base64.b64encode(wav_bytes(wav)).decode(), "format": "wav"}}
    return [{"role": "user", "content": [{"type": "text", "text": QUESTION}, part]}]


async def one_request(client: httpx.AsyncClient, url: str, messages: list[dict], max_tokens: int) -> Result:
    body = {"model": MODEL, "messages": messages, "stream": True, "max_tokens": max_tokens, "temperature": 0,
            "ignore_eos": True, "stream_options": {"include_usage": True}}
    result, start = Result(), time.perf_counter()
    last = start
    async with client.stream("POST", url, json=body) as response:
        if response.status_code != 200:
            return result
        async for line in response.aiter_lines():
            if not line.startswith("data:") or line.endswith("[DONE]"):
                continue
            now = time.perf_counter()
            chunk = json.loads(line[5:])
            if chunk.get("choices"):
                if result.ttft == 0.0:
                    result.ttft = now - start
                else:
                    result.itl.append(now - last)
                last = now
            if chunk.get("usage"):
                result.output_tokens = chunk["usage"]["completion_tokens"]
    result.latency = time.perf_counter() - start
    result.ok = result.output_tokens > 0
    return result


async def run_level(url: str, conversations: list[list[dict]], concurrency: int, max_tokens: int,
                    time_limit: float) -> tuple[list[Result], float]:
    limits = httpx.Limits(max_connections=concurrency)
    semaphore = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=time_limit, limits=limits) as client:
        async def bounded(messages):
            async with semaphore:
                return await one_request(client, url, messages, max_tokens)

        start = time.perf_counter()
        results = await asyncio.wait_for(asyncio.gather(*(bounded(m) for m in conversations)), time_limit)
        return results, time.perf_counter() - start


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"mean": 0.0, "p50": 0.0, "p90": 0.0, "p99": 0.0}
    ms = np.asarray(values) * 1000
    return {"mean": float(ms.mean()), "p50": float(np.percentile(ms, 50)), "p90": float(np.percentile(ms, 90)),
            "p99": float(np.percentile(ms, 99))}


def summarize(results: list[Result], duration: float) -> dict:
    done = [r for r in results if r.ok]
    tpot = [(r.latency - r.ttft) / (r.output_tokens - 1) for r in done if r.output_tokens > 1]
    return {"completed": len(done), "failed": len(results) - len(done), "duration_s": duration,
            "request_throughput": len(done) / duration,
            "output_throughput": sum(r.output_tokens for r in done) / duration,
            "ttft_ms": percentiles([r.ttft for r in done]), "tpot_ms": percentiles(tpot),
            "itl_ms": percentiles([x for r in done for x in r.itl]),
            "e2el_ms": percentiles([r.latency for r in done])}


def offline_throughput(model_dir: Path, conversations: list[list[dict]], concurrency: int, max_tokens: int,
                       args: argparse.Namespace) -> float:
    """Requests per second of the offline engine on the same requests, batch capped at `concurrency`."""
    llm = LLM(model_dir, dtype=args.dtype, device=args.device, max_num_seqs=concurrency,
              kv_cache_memory_gb=args.kv_cache_memory_gb)
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    llm.chat(conversations[:1], params)  # warm-up
    start = time.perf_counter()
    llm.chat(conversations, params)
    return len(conversations) / (time.perf_counter() - start)


def readable_random_checkpoint(out: Path, hidden: int, layers: int) -> Path:
    """A random checkpoint whose head never picks a token that is only part of a UTF-8 character.

    A random head picks lone bytes often; their text is held back until a character completes, so
    chunks would bunch up and ITL would measure the detokenizer, not the server. A real model writes
    text: zeroing those tokens' head rows (logit 0, below the best of the others) gets the same here.
    """
    write_tiny_checkpoint(out, hidden=hidden, layers=layers, dtype="float32", num_shards=1)
    tokenizer = StepTokenizer.from_dir(out)
    weights = load_file(out / "model.safetensors")
    partial = [i for i in range(tokenizer.vocab_size) if "\ufffd" in tokenizer.decode([i])]
    weights["lm_head.weight"][partial] = 0
    save_file(weights, out / "model.safetensors", metadata={"format": "pt"})
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def add_server_options(p: argparse.ArgumentParser) -> None:
    """The options `start_server` reads from its args (beside the concurrency it sizes the server for)."""
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default=None)
    p.add_argument("--kv-cache-memory-gb", type=float, default=0.05)


def start_server(model_dir: Path, port: int, args: argparse.Namespace, extra: tuple[str, ...] = ()) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "stepaudio", "serve", str(model_dir), "--port", str(port), "--served-model-name",
           MODEL, "--max-num-seqs", str(max(args.concurrency)), "--kv-cache-memory-gb", str(args.kv_cache_memory_gb),
           "--device", args.device, "--uvicorn-log-level", "warning", *extra]
    if args.dtype:
        cmd += ["--dtype", args.dtype]
    return wait_until_healthy(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), port, 120)


def wait_until_healthy(server: subprocess.Popen, port: int, seconds: float,
                       log: Path | None = None) -> subprocess.Popen:
    """`server` once its /health answers 200; it is killed (and its log's tail shown) if it dies or is late."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            tail = ":\n" + log.read_text()[-3000:] if log else ""
            raise RuntimeError(f"{server.args[0]} exited with {server.returncode}{tail}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            time.sleep(0.3)
    server.kill()
    raise RuntimeError(f"{server.args[0]} did not start within {seconds:.0f} s")


def table(rows: list[dict]) -> str:
    lines = ["| streams | req/s served | req/s offline | ratio | output tok/s | TTFT p50 / p90 / p99 ms | "
             "ITL p50 / p90 / p99 ms | TPOT p50 ms | E2EL p50 ms |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        t, i = r["ttft_ms"], r["itl_ms"]
        lines.append(f"| {r['concurrency']} | {r['request_throughput']:.2f} | {r['offline_rps']:.2f} | "
                     f"**{r['request_throughput'] / r['offline_rps']:.2f}×** | {r['output_throughput']:.0f} | "
                     f"{t['p50']:.0f} / {t['p90']:.0f} / {t['p99']:.0f} | {i['p50']:.1f} / {i['p90']:.1f} / "
                     f"{i['p99']:.1f} | {r['tpot_ms']['p50']:.1f} | {r['e2el_ms']['p50']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, help="checkpoint folder (default: a random one, see --hidden-size)")
    p.add_argument("--hidden-size", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--requests", type=int, default=2, help="requests per level = this x concurrency (at least 8)")
    p.add_argument("--audio-seconds", type=float, default=5.0)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--time-limit", type=float, default=300.0, help="seconds per level at most")
    add_server_options(p)
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model or readable_random_checkpoint(Path(tmp) / "model", args.hidden_size, args.layers)
        port = free_port()
        server = start_server(model_dir, port, args)
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        rows = []
        try:
            asyncio.run(run_level(url, [audio_message(10**6, args.audio_seconds)], 1, args.max_tokens, 60))
            for level, c in enumerate(args.concurrency):
                count = max(8, args.requests * c)
                conversations = [audio_message(level * 10**4 + i, args.audio_seconds) for i in range(count)]
                results, duration = asyncio.run(run_level(url, conversations, c, args.max_tokens, args.time_limit))
                rows.append({"concurrency": c, "requests": count, "seed": level * 10**4,
                             **summarize(results, duration)})
                print(f"{c} streams: {rows[-1]['request_throughput']:.2f} req/s", file=sys.stderr)
        finally:
            server.send_signal(signal.SIGINT)
            server.wait(30)
        for row in rows:
            conversations = [audio_message(row["seed"] + i, args.audio_seconds) for i in range(row["requests"])]
            row["offline_rps"] = offline_throughput(model_dir, conversations, row["concurrency"], args.max_tokens, args)
    print(f"model: {args.model or f'random, hidden {args.hidden_size}, {args.layers} layers'}; "
          f"{args.audio_seconds:g} s audio + text per request, {args.max_tokens} output tokens; "
          f"torch threads {os.cpu_count()} cores")
    print(table(rows))
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
