"""Soak: many mixed requests against one `stepaudio serve` process, with its memory and KV blocks watched.

The mix (see load_driver.KINDS) cycles text and audio, streamed and not, streams the client drops after two
chunks and whole-response requests it gives up on after 0.3 s, from `--concurrency` clients at once. The
server's resident memory and KV cache use are sampled throughout. Pass:

- every request ends cleanly (a full answer, an OpenAI-style error, or the drop the client chose);
- resident memory at the end, idle, is within 5 % of what it was after the warm-up (the first 10 %);
- every KV block is free once the server is idle;
- /metrics agrees with the client: 200s, 499s (given-up requests), aborted and finished requests.

    .venv/bin/python benchmarks/soak.py --requests 1000            # a random small checkpoint, CPU
    .venv/bin/python benchmarks/soak.py --model DIR --requests 5000 --out soak.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

from bench_serving import add_server_options, free_port, readable_random_checkpoint, start_server
from load_driver import KINDS, Outcome, ServerProbe, one

CHAT = '{route="/v1/chat/completions",status="%s"}'
RSS_GROWTH_LIMIT = 0.05
WARMUP_FRACTION = 0.1


@dataclass
class SoakReport:
    requests: int
    duration_s: float
    kinds: dict[str, int]
    unclean: list[str]
    rss_after_warmup_mb: float
    rss_end_mb: float
    rss_max_mb: float
    rss_growth: float
    kv_usage_max: float
    idle_at_end: bool
    client_counts: dict[str, int]
    server_counts: dict[str, int]
    samples: list[tuple[float, float, float]] = field(default_factory=list)  # (seconds, RSS MB, KV use)

    @property
    def failures(self) -> list[str]:
        found = [f"{len(self.unclean)} requests did not end cleanly: {self.unclean[:3]}"] if self.unclean else []
        if self.rss_growth >= RSS_GROWTH_LIMIT:
            found.append(f"resident memory grew {self.rss_growth:.1%} after the warm-up")
        if not self.idle_at_end:
            found.append("KV blocks or requests still held once the clients were done")
        if self.client_counts != self.server_counts:
            found.append(f"/metrics {self.server_counts} disagrees with the client {self.client_counts}")
        return found


def client_counts(outcomes: list[Outcome]) -> dict[str, int]:
    """What /metrics must show for these outcomes (see `server_counts`)."""
    status = Counter(o.status for o in outcomes)
    return {"200": status[200], "499": sum(1 for o in outcomes if o.kind == "timeout"),
            "aborted": sum(1 for o in outcomes if o.kind in ("disconnect", "timeout")),
            "finished": sum(1 for o in outcomes if o.completed)}


def server_counts(before: dict[str, float], after: dict[str, float]) -> dict[str, int]:
    def grew(key: str) -> int:
        return int(after.get(key, 0) - before.get(key, 0))

    return {"200": grew("stepaudio:http_responses_total" + CHAT % 200),
            "499": grew("stepaudio:http_responses_total" + CHAT % 499),
            "aborted": grew("stepaudio:requests_aborted_total"), "finished": grew("vllm:request_success_total")}


async def soak(base: str, pid: int, requests: int, concurrency: int, max_tokens: int = 8,
               audio_seconds: float = 1.0, progress: bool = False) -> SoakReport:
    """Run `requests` mixed requests against the server at `base` (process `pid`) and report."""
    probe = ServerProbe(base, pid)
    url = base + "/v1/chat/completions"
    before = await asyncio.to_thread(probe.metrics)
    outcomes: list[Outcome] = []
    samples: list[tuple[float, float, float]] = []
    start = time.perf_counter()
    warm_rss: list[float] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(requests):
        queue.put_nowait(i)

    async def client(c: httpx.AsyncClient) -> None:
        while not queue.empty():
            i = queue.get_nowait()
            outcomes.append(await one(c, url, KINDS[i % len(KINDS)], i, max_tokens, audio_seconds))
            if len(outcomes) == int(requests * WARMUP_FRACTION) and not warm_rss:
                warm_rss.append(probe.rss_bytes() / 2**20)
            if progress and len(outcomes) % 100 == 0:
                print(f"soak: {len(outcomes)}/{requests} requests", file=sys.stderr)

    async def sampler() -> None:
        while True:
            kv = (await asyncio.to_thread(probe.metrics)).get("vllm:kv_cache_usage_perc", 0.0)
            samples.append((time.perf_counter() - start, probe.rss_bytes() / 2**20, kv))
            await asyncio.sleep(0.5)

    watch = asyncio.create_task(sampler())
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=concurrency)) as c:
        await asyncio.gather(*(client(c) for _ in range(concurrency)))
    duration = time.perf_counter() - start
    idle = await probe.wait_idle()
    watch.cancel()
    after = await asyncio.to_thread(probe.metrics)
    end_rss = probe.rss_bytes() / 2**20
    baseline = warm_rss[0] if warm_rss else samples[0][1]
    return SoakReport(
        requests=len(outcomes), duration_s=duration, kinds=dict(Counter(o.kind for o in outcomes)),
        unclean=[f"{o.kind}: {o.status} {o.problem}" for o in outcomes if not o.clean],
        rss_after_warmup_mb=baseline, rss_end_mb=end_rss, rss_max_mb=max(s[1] for s in samples),
        rss_growth=(end_rss - baseline) / baseline, kv_usage_max=max(s[2] for s in samples),
        idle_at_end=idle, client_counts=client_counts(outcomes), server_counts=server_counts(before, after),
        samples=samples)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, help="checkpoint folder (default: a random one, hidden 256, 4 layers)")
    p.add_argument("--requests", type=int, default=1000)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--max-num-seqs", type=int, default=4)
    p.add_argument("--max-tokens", type=int, default=8)
    p.add_argument("--audio-seconds", type=float, default=1.0)
    add_server_options(p)
    p.add_argument("--out", type=Path, help="write the report as JSON here")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model or readable_random_checkpoint(Path(tmp) / "model", 256, 4)
        port = free_port()
        server = start_server(model_dir, port, argparse.Namespace(**{**vars(args), "concurrency": [args.max_num_seqs]}))
        try:
            report = asyncio.run(soak(f"http://127.0.0.1:{port}", server.pid, args.requests, args.concurrency,
                                      args.max_tokens, args.audio_seconds, progress=True))
        finally:
            server.send_signal(signal.SIGINT)
            server.wait(30)
    summary = {k: v for k, v in asdict(report).items() if k != "samples"}
    print(json.dumps(summary, indent=2))
    if args.out:
        args.out.write_text(json.dumps(asdict(report), indent=2))
    for failure in report.failures:
        print(f"FAIL: {failure}", file=sys.stderr)
    sys.exit(1 if report.failures else 0)


if __name__ == "__main__":
    main()
