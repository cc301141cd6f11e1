"""Prometheus metrics of the realtime mode, in the server's registry (so /metrics shows them with the rest)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)
MARGIN_BUCKETS = (-5.0, -2.0, -1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0)
RTF_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0)


class RealtimeMetrics:
    def __init__(self, registry: CollectorRegistry, model_name: str):
        self.model_name = model_name
        labels = ["model_name", "schedule"]
        self.first_audio = Histogram(
            "stepaudio:realtime_first_audio_seconds", "End of the user's turn (commit or end of speech) to the "
            "first audio byte of the answer.", labels, buckets=LATENCY_BUCKETS, registry=registry)
        self.margin = Histogram(
            "stepaudio:realtime_think_ahead_margin_seconds", "Audio already sent still left to play when the thought "
            "segment the next spoken segment needs was ready (below 0: a silence).", labels,
            buckets=MARGIN_BUCKETS, registry=registry)
        self.margin_violations = Counter(
            "stepaudio:realtime_think_ahead_violations", "Thought segments ready only after the audio sent before "
            "them had finished playing.", labels, registry=registry)
        self.tts_rtf = Histogram("stepaudio:realtime_tts_realtime_factor", "Synthesis time over audio duration, per "
                                 "spoken clause.", ["model_name"], buckets=RTF_BUCKETS, registry=registry)
        self.barge_ins = Counter("stepaudio:realtime_barge_ins", "Answers cut short because the user spoke.",
                                 ["model_name"], registry=registry)
        self.dropped_turns = Counter("stepaudio:realtime_dropped_turns", "User turns that got no spoken answer "
                                     "(cancelled before the first audio, failed, or empty).", ["model_name"],
                                     registry=registry)
        self.responses = Counter("stepaudio:realtime_responses", "Responses by final status.",
                                 ["model_name", "status"], registry=registry)
        self.sessions = Gauge("stepaudio:realtime_sessions", "Open realtime WebSocket sessions.", ["model_name"],
                              registry=registry)
