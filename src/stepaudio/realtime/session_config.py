"""The session object of the protocol: what a client may set with session.update, checked as a whole.

Both shapes the `openai` client has used are read: the GA one (`session.audio.input.format`,
`session.audio.input.turn_detection`) and the beta one (`input_audio_format`, `turn_detection`). Our own
knobs live under `session.stepaudio` (schedule and segment sizes, sampling), which OpenAI does not have.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from .pacing import Pacing
from .tts import OUTPUT_RATE

VAD_DEFAULTS = {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300, "silence_duration_ms": 500,
                "create_response": True, "interrupt_response": True}
PCM = {"type": "audio/pcm", "rate": OUTPUT_RATE}


class SessionError(ValueError):
    def __init__(self, message: str, param: str | None = None, code: str = "invalid_value"):
        super().__init__(message)
        self.param, self.code = param, code


@dataclass(frozen=True)
class SessionConfig:
    model: str
    instructions: str | None = None
    turn_detection: dict[str, Any] | None = field(default_factory=lambda: dict(VAD_DEFAULTS))
    pacing: Pacing = Pacing()
    temperature: float = 0.7
    seed: int | None = None
    ignore_eos: bool = False   # as vLLM's: speak to max_response_tokens (load tests, benchmarks)

    def as_event_session(self, session_id: str) -> dict[str, Any]:
        p = self.pacing
        return {"id": session_id, "object": "realtime.session", "type": "realtime", "model": self.model,
                "instructions": self.instructions or "", "output_modalities": ["audio"],
                "audio": {"input": {"format": PCM, "turn_detection": self.turn_detection},
                          "output": {"format": PCM, "voice": "joe"}},
                "max_output_tokens": p.max_response_tokens,
                "stepaudio": {"schedule": p.schedule, "think_segment_tokens": p.think_segment_tokens,
                              "response_segment_tokens": p.response_segment_tokens,
                              "max_thinking_tokens": p.max_thinking_tokens,
                              "max_response_tokens": p.max_response_tokens, "temperature": self.temperature,
                              "seed": self.seed, "ignore_eos": self.ignore_eos}}

    def updated(self, session: Any) -> SessionConfig:
        """A new config with `session` (the event's object) applied; SessionError names the bad field."""
        if not isinstance(session, dict):
            raise SessionError("session must be an object", "session")
        changes: dict[str, Any] = {}
        if "instructions" in session:
            if not isinstance(session["instructions"], (str, type(None))):
                raise SessionError("instructions must be a string", "session.instructions")
            changes["instructions"] = session["instructions"] or None
        audio = _object(session.get("audio"), "session.audio")
        for side in ("input", "output"):
            part = _object(audio.get(side), f"session.audio.{side}")
            if "format" in part:
                _check_format(part["format"], f"session.audio.{side}.format")
            legacy = f"{side}_audio_format"
            if legacy in session:
                _check_format(session[legacy], f"session.{legacy}")
        detection = _MISSING
        if "turn_detection" in (audio.get("input") or {}):   # an object: checked above
            detection = audio["input"]["turn_detection"]
        elif "turn_detection" in session:
            detection = session["turn_detection"]
        if detection is not _MISSING:
            changes["turn_detection"] = _turn_detection(detection)
        pacing: dict[str, Any] = {}
        limit = session.get("max_output_tokens", session.get("max_response_output_tokens"))
        if limit is not None and limit != "inf":
            pacing["max_response_tokens"] = limit
        ours = _object(session.get("stepaudio"), "session.stepaudio")
        for key in ("schedule", "think_segment_tokens", "response_segment_tokens", "max_thinking_tokens",
                    "max_response_tokens"):
            if key in ours:
                pacing[key] = ours[key]
        for key, value in pacing.items():
            if key != "schedule":
                _integer(value, f"session.stepaudio.{key}", 1, MAX_TOKENS)
        try:
            changes["pacing"] = replace(self.pacing, **pacing)
        except ValueError as e:
            raise SessionError(str(e), "session.stepaudio") from None
        if "temperature" in ours or "temperature" in session:
            t = ours.get("temperature", session.get("temperature"))
            if not isinstance(t, (int, float)) or isinstance(t, bool) or not 0 <= t <= 2:
                raise SessionError("temperature must be a number in [0, 2]", "session.stepaudio.temperature")
            changes["temperature"] = float(t)
        if "seed" in ours:
            if ours["seed"] is not None:
                _integer(ours["seed"], "session.stepaudio.seed", -(2**63), 2**63 - 1)  # a torch generator's range
            changes["seed"] = ours["seed"]
        if "ignore_eos" in ours:
            _boolean(ours["ignore_eos"], "session.stepaudio.ignore_eos")
            changes["ignore_eos"] = ours["ignore_eos"]
        return replace(self, **changes)


_MISSING = object()
MAX_TOKENS = 1 << 20   # far above any context; bounds what a client may ask for


def _object(value: Any, param: str) -> dict[str, Any]:
    """An optional JSON object (absent or null: empty)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SessionError(f"{param.rsplit('.', 1)[-1]} must be an object", param)
    return value


def _integer(value: Any, param: str, low: int, high: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise SessionError(f"{param.rsplit('.', 1)[-1]} must be an integer in [{low}, {high}], got {value!r}",
                           param)


def _boolean(value: Any, param: str) -> None:
    if not isinstance(value, bool):
        raise SessionError(f"{param.rsplit('.', 1)[-1]} must be true or false", param)


def _check_format(fmt: Any, param: str) -> None:
    """Only pcm16 mono 24 kHz, as "pcm16" (beta) or {"type": "audio/pcm", "rate": 24000} (GA)."""
    if fmt == "pcm16":
        return
    if isinstance(fmt, dict) and fmt.get("type") == "audio/pcm" and fmt.get("rate", OUTPUT_RATE) == OUTPUT_RATE:
        return
    raise SessionError(f"only pcm16 mono at 24 kHz is supported ({{'type': 'audio/pcm', 'rate': 24000}} or "
                       f"'pcm16'), got {fmt!r}", param, code="unsupported_audio_format")


def _turn_detection(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or value.get("type", "server_vad") != "server_vad":
        raise SessionError("turn_detection must be null (manual turns) or {'type': 'server_vad', ...}; "
                           "semantic_vad is not supported", "session.audio.input.turn_detection")
    merged = {**VAD_DEFAULTS, **{k: v for k, v in value.items() if v is not None}}
    param = "session.audio.input.turn_detection"
    threshold = merged["threshold"]
    if not isinstance(threshold, (int, float)) or isinstance(threshold, bool) or not 0 < threshold < 1:
        raise SessionError("turn_detection.threshold must be in (0, 1)", param + ".threshold")
    _integer(merged["silence_duration_ms"], param + ".silence_duration_ms", 50, 10000)
    _integer(merged["prefix_padding_ms"], param + ".prefix_padding_ms", 0, 10000)
    for flag in ("create_response", "interrupt_response"):
        _boolean(merged[flag], f"{param}.{flag}")
    return merged
