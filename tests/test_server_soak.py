"""A short soak (200 mixed requests) against `stepaudio serve` on the tiny checkpoint: nothing lost, memory
flat, every KV block back, /metrics agreeing with the client. The full run is benchmarks/soak.py."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

import pytest

from model_fixtures import tiny_dir  # noqa: F401  (fixture)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from bench_serving import free_port, start_server  # noqa: E402
from soak import soak  # noqa: E402


@pytest.fixture(scope="module")
def server(tiny_dir):  # noqa: F811
    port = free_port()
    options = argparse.Namespace(concurrency=[4], kv_cache_memory_gb=0.05, device="cpu", dtype=None)
    process = start_server(tiny_dir, port, options)
    yield f"http://127.0.0.1:{port}", process.pid
    process.send_signal(signal.SIGINT)
    process.wait(30)


def test_a_200_request_soak_loses_nothing_and_leaks_nothing(server):
    report = asyncio.run(soak(*server, requests=200, concurrency=6, max_tokens=6, audio_seconds=0.5))
    assert report.requests == 200 and set(report.kinds) == {"text", "text_stream", "audio", "audio_stream",
                                                             "disconnect", "timeout"}
    assert report.failures == [], report.failures
    assert report.kv_usage_max > 0  # the KV cache was in use while it ran
