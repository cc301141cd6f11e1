"""Prometheus metrics for /metrics, in a registry of the app's own (several apps can share a process).

Engine metrics keep vLLM's names (`vllm:num_requests_running`, `vllm:kv_cache_usage_perc`,
`vllm:time_to_first_token_seconds`, ...) so existing vLLM dashboards work; what vLLM lacks is
under `stepaudio:`. Engine state is read when scraped, not polled.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..engine.engine import LLMEngine

# vLLM's bucket edges for request latencies (seconds).
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
               40.0, 80.0)
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
               480.0, 960.0, 1920.0, 7680.0)


class EngineCollector(Collector):
    """Running and waiting requests, KV cache use and preemptions, read from the engine at scrape time."""

    def __init__(self, engine: LLMEngine, model_name: str):
        self.engine = engine
        self.labels = {"model_name": model_name}

    def _gauge(self, name: str, doc: str, value: float) -> GaugeMetricFamily:
        family = GaugeMetricFamily(name, doc, labels=list(self.labels))
        family.add_metric(list(self.labels.values()), value)
        return family

    def collect(self) -> Iterator[Metric]:
        engine = self.engine
        running = len({seq.request_id for seq in list(engine.scheduler.running)})
        blocks = engine.blocks
        yield self._gauge("vllm:num_requests_running", "Requests with a sequence in the running batch.", running)
        yield self._gauge("vllm:num_requests_waiting", "Requests accepted by the engine, not yet running.",
                          max(0, len(engine.requests) - running))
        yield self._gauge("vllm:kv_cache_usage_perc", "Fraction of KV cache blocks in use (1 = full).",
                          1.0 - blocks.num_free_blocks / blocks.num_blocks)
        yield self._gauge("stepaudio:kv_cache_capacity_tokens", "Tokens the KV cache holds.",
                          engine.kv_capacity_tokens)
        preemptions = CounterMetricFamily("vllm:num_preemptions", "Sequences preempted (KV cache full).",
                                          labels=list(self.labels))
        preemptions.add_metric(list(self.labels.values()), engine.scheduler.num_preemptions)
        yield preemptions


class ServerMetrics:
    def __init__(self, engine: LLMEngine, model_name: str):
        self.registry = CollectorRegistry()
        self.model_name = model_name
        labels = ["model_name"]
        reg = self.registry
        self.http_responses = Counter("stepaudio:http_responses", "HTTP responses by route and status code.",
                                      ["route", "status"], registry=reg)
        self.prompt_tokens = Counter("vllm:prompt_tokens", "Prompt tokens of finished requests.", labels,
                                     registry=reg)
        self.audio_tokens = Counter("stepaudio:audio_tokens", "Audio rows in prompts of finished requests.", labels,
                                    registry=reg)
        self.generation_tokens = Counter("vllm:generation_tokens", "Generated tokens.", labels, registry=reg)
        self.reasoning_tokens = Counter("stepaudio:reasoning_tokens", "Generated tokens inside <think>.", labels,
                                        registry=reg)
        self.request_success = Counter("vllm:request_success", "Finished sequences by finish reason.",
                                       labels + ["finished_reason"], registry=reg)
        self.requests_aborted = Counter("stepaudio:requests_aborted", "Requests given up before they finished "
                                        "(the client left or pressed Stop).", labels, registry=reg)
        self.ttft = Histogram("vllm:time_to_first_token_seconds", "Time from the request's arrival to its first token.",
                              labels, buckets=TTFT_BUCKETS, registry=reg)
        self.itl = Histogram("vllm:inter_token_latency_seconds", "Time between successive outputs of a request.",
                             labels, buckets=ITL_BUCKETS, registry=reg)
        self.e2e = Histogram("vllm:e2e_request_latency_seconds", "Time from request arrival to its last token.",
                             labels, buckets=E2E_BUCKETS, registry=reg)
        reg.register(EngineCollector(engine, model_name))

    def track(self) -> RequestTracker:
        return RequestTracker(self)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class RequestTracker:
    """Times one request's outputs: the first gives TTFT, each later one an inter-token latency."""

    def __init__(self, metrics: ServerMetrics):
        self.metrics = metrics
        self.start = time.perf_counter()
        self.last: float | None = None

    def output(self) -> None:
        now = time.perf_counter()
        m = self.metrics
        if self.last is None:
            m.ttft.labels(m.model_name).observe(now - self.start)
        else:
            m.itl.labels(m.model_name).observe(now - self.last)
        self.last = now

    def aborted(self) -> None:
        self.metrics.requests_aborted.labels(self.metrics.model_name).inc()

    def finished(self, prompt_tokens: int, audio_tokens: int, completion_tokens: int, reasoning_tokens: int,
                 finish_reasons: list[str]) -> None:
        m, name = self.metrics, self.metrics.model_name
        m.prompt_tokens.labels(name).inc(prompt_tokens)
        m.audio_tokens.labels(name).inc(audio_tokens)
        m.generation_tokens.labels(name).inc(completion_tokens)
        m.reasoning_tokens.labels(name).inc(reasoning_tokens)
        for reason in finish_reasons:
            m.request_success.labels(name, reason).inc()
        m.e2e.labels(name).observe(time.perf_counter() - self.start)
