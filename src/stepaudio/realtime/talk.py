"""`stepaudio talk`: one spoken turn over /v1/realtime from the terminal, the answer saved as a wav file,
and the timeline of the turn printed (speech end, first thought, first audio, done)."""

from __future__ import annotations

import argparse
import sys

import soundfile as sf

from ..audio.io import SAMPLE_RATE, load_audio
from ..cli_args import require_path
from ..client import error_message
from ..endpoint import check_endpoint, model_endpoint
from ..extras import require_extra
from .pacing import Pacing


def check_args(args: argparse.Namespace) -> Pacing:
    """Everything that can be wrong with the arguments, before a model loads (one line each)."""
    require_path(args.audio, "audio file")
    if args.out.suffix.lower() != ".wav":
        raise ValueError(f"--out must be a .wav file, got {args.out}")
    if not args.out.parent.is_dir():
        raise FileNotFoundError(f"the folder of --out, {args.out.parent}, does not exist")
    check_endpoint(args)
    require_extra("realtime", "realtime voice")
    return Pacing(args.schedule, args.think_segment_tokens, args.response_segment_tokens, args.max_thinking_tokens,
                  args.max_response_tokens)


def connected(url: str, api_key: str | None):
    """The client, or one ConnectionError line saying why the server refused it (401, 503, ...)."""
    from websockets.exceptions import InvalidStatus

    from .client import RealtimeClient

    try:
        return RealtimeClient(url, api_key=api_key)
    except InvalidStatus as e:
        reason = error_message(e.response.body or b"").strip() or e.response.reason_phrase
        raise ConnectionError(f"the server refused {url}: HTTP {e.response.status_code}: {reason}") from None


def run_talk(args: argparse.Namespace) -> None:
    pacing = check_args(args)
    from .client import pcm16_24k, realtime_url  # websockets: the realtime extra
    from .tts import OUTPUT_RATE

    question = pcm16_24k(load_audio(args.audio), SAMPLE_RATE)
    with model_endpoint(args) as (api_base, _):
        with connected(realtime_url(api_base), args.api_key) as client:
            client.configure(schedule=pacing.schedule, think_segment_tokens=pacing.think_segment_tokens,
                             response_segment_tokens=pacing.response_segment_tokens,
                             max_thinking_tokens=pacing.max_thinking_tokens,
                             max_response_tokens=pacing.max_response_tokens, temperature=args.temperature,
                             seed=args.seed)
            result = client.ask(question)
    for error in result.errors:
        print(f"server error: {error.get('message')}", file=sys.stderr)
    import numpy as np

    sf.write(args.out, np.frombuffer(bytes(result.audio), dtype="<i2"), OUTPUT_RATE, subtype="PCM_16")
    marks = result.marks
    reason = (result.status_details or {}).get("reason")
    status = f"{result.status} ({reason})" if reason else result.status   # e.g. incomplete (max_output_tokens)
    print(f"schedule {pacing.schedule}: {status}, {result.audio_seconds:.1f} s of speech -> {args.out}")
    print("  speech end (commit)   0.000 s")
    for label, key in (("first thought", "first_thought"), ("first audio", "first_audio"), ("done", "done")):
        print(f"  {label:<20} {marks[key]:6.3f} s" if key in marks else f"  {label:<20}      -")
    if "min_think_ahead_margin_s" in result.metadata:
        print(f"  think-ahead margin   {float(result.metadata['min_think_ahead_margin_s']):6.3f} s (smallest)")
    if result.thinking:
        print(f"thinking: {' '.join(result.thinking.split())}")
    print(f"said: {result.transcript.strip()}")
