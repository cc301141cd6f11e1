"""Realtime benchmark: first-audio latency, think-ahead margin and spoken accuracy for each schedule.

Spoken arithmetic questions (`stepaudio eval make-synthetic --tasks arithmetic`: "What is 23 plus 19?" read by
held-out espeak-ng voices) go to /v1/realtime on the default model, in-process, one conversation per
question, each question asked once with every schedule (interleaved, so a busy machine slows all schedules
alike). First audio is timed by the client from response.create (the end of the user's turn) to the first
audio delta. The spoken answer's text is scored as `stepaudio eval` scores Spoken-MQA (`math_correct`).
Reference, measured in the same run: `think-then-speak` (the whole reasoning first); each schedule's
first audio is given as a ratio to it and its accuracy as a difference.

Bounded: --questions, token budgets per answer, and --time-budget (minutes; stops between questions).

    .venv/bin/python benchmarks/bench_realtime.py --questions 20
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from tqdm import tqdm

from stepaudio.default_model import DEFAULT_MODEL_NAME
from stepaudio.default_model.assemble import ensure_default_model
from stepaudio.engine.engine import EngineConfig, LLMEngine
from stepaudio.evaluation.prompts import MATH_INSTRUCTION
from stepaudio.evaluation.scoring import math_correct
from stepaudio.evaluation.synthetic import make_synthetic
from stepaudio.model.loader import load_model
from stepaudio.realtime.client import RealtimeClient, pcm16_24k, realtime_url
from stepaudio.realtime.pacing import SCHEDULES
from stepaudio.server.launcher import ServerThread, build_app
from stepaudio.server.settings import ServerSettings
from stepaudio.text.tokenizer import StepTokenizer

BASELINE = "think-then-speak"


def machine() -> str:
    model = next((ln.split(":", 1)[1].strip() for ln in subprocess.run(["lscpu"], capture_output=True, text=True)
                  .stdout.splitlines() if ln.startswith("Model name")), platform.processor())
    return (f"{model}, {os.cpu_count()} cores, bf16 kernels: {torch.ops.mkldnn._is_mkldnn_bf16_supported()}, "
            f"load average at start {os.getloadavg()[0]:.1f}")


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--questions", type=int, default=20)
    parser.add_argument("--schedules", nargs="+", default=list(SCHEDULES), choices=SCHEDULES)
    parser.add_argument("--think-segment-tokens", type=int, default=80)
    parser.add_argument("--response-segment-tokens", type=int, default=20)
    parser.add_argument("--max-thinking-tokens", type=int, default=160)
    parser.add_argument("--max-response-tokens", type=int, default=48)
    parser.add_argument("--time-budget", type=float, default=40.0, help="minutes; stops between questions")
    parser.add_argument("--json", type=Path, default=Path("test-artifacts/bench_realtime.json"))
    args = parser.parse_args()
    if BASELINE not in args.schedules:
        args.schedules.append(BASELINE)

    print(f"machine: {machine()}", flush=True)
    folder = Path(tempfile.mkdtemp(prefix="bench_realtime_"))
    manifest = make_synthetic(folder, n_per_task=args.questions, tasks=["arithmetic"], progress=False)
    items = [json.loads(line) for line in manifest.read_text().splitlines()]
    model_dir = ensure_default_model(progress=False)
    model = load_model(model_dir)
    engine = LLMEngine(model, StepTokenizer.from_dir(model_dir), EngineConfig(max_model_len=2048))
    settings = ServerSettings(served_model_names=[DEFAULT_MODEL_NAME], model_root=str(model_dir))
    knobs = {"think_segment_tokens": args.think_segment_tokens, "response_segment_tokens": args.response_segment_tokens,
             "max_thinking_tokens": args.max_thinking_tokens, "max_response_tokens": args.max_response_tokens,
             "temperature": 0.0}
    rows: list[dict] = []
    deadline = time.monotonic() + 60 * args.time_budget
    with ServerThread(build_app(engine, settings)) as server:
        url = realtime_url(server.url + "/v1", DEFAULT_MODEL_NAME)
        with RealtimeClient(url) as client:   # warm-up: the voice loads, the kernels warm
            client.recv()
            client.configure(schedule="no-think", **knobs)
            wav, sr = sf.read(folder / items[0]["audio"], dtype="float32")
            client.ask(pcm16_24k(wav, sr), text=MATH_INSTRUCTION)
        for item in tqdm(items, desc="questions", file=sys.stderr):
            if time.monotonic() > deadline:
                print(f"time budget reached after {len(rows) // len(args.schedules)} questions", flush=True)
                break
            wav, sr = sf.read(folder / item["audio"], dtype="float32")
            question = pcm16_24k(wav, sr)
            for schedule in args.schedules:
                with RealtimeClient(url) as client:
                    client.recv()
                    client.configure(schedule=schedule, **knobs)
                    result = client.ask(question, text=MATH_INSTRUCTION)
                meta = result.metadata
                rows.append({"id": item["id"], "schedule": schedule, "status": result.status,
                             "first_audio_s": result.marks.get("first_audio"), "done_s": result.marks.get("done"),
                             "server_first_text_s": float(meta.get("first_text_s", "nan")),
                             "server_first_audio_s": float(meta.get("first_audio_s", "nan")),
                             "min_margin_s": float(meta["min_think_ahead_margin_s"])
                             if "min_think_ahead_margin_s" in meta else None,
                             "audio_s": result.audio_seconds, "said": result.transcript,
                             "correct": math_correct(result.transcript, item["answer"]), "answer": item["answer"]})
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(rows, indent=1))
    report(rows, args.schedules)
    print(f"per-turn rows: {args.json}")


def report(rows: list[dict], schedules: list[str]) -> None:
    def of(schedule: str, key: str) -> list[float]:
        return [r[key] for r in rows if r["schedule"] == schedule and r[key] is not None and r[key] == r[key]]

    base_latency = percentile(of(BASELINE, "first_audio_s"), 50)
    base_accuracy = 100 * np.mean(of(BASELINE, "correct")) if of(BASELINE, "correct") else float("nan")
    print(f"\n{len(rows) // len(schedules)} questions per schedule; reference: {BASELINE} in the same run")
    print("| schedule | first audio p50 | p90 | max | vs think-then-speak p50 | text->audio p50 | "
          "min think-ahead margin (median over turns) | turns with a violation | accuracy | vs think-then-speak |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for s in schedules:
        lat = of(s, "first_audio_s")
        tts = [a - t for a, t in zip(of(s, "server_first_audio_s"), of(s, "server_first_text_s"))]
        margins = of(s, "min_margin_s")
        acc = 100 * np.mean(of(s, "correct"))
        margin = f"{percentile(margins, 50):.2f} s" if margins else "-"
        print(f"| {s} | {percentile(lat, 50):.2f} s | {percentile(lat, 90):.2f} s | {max(lat, default=float('nan')):.2f} s"
              f" | {percentile(lat, 50) / base_latency:.2f}x | {percentile(tts, 50):.2f} s | {margin} | "
              f"{sum(m < 0 for m in margins)} | {acc:.1f} % | {acc - base_accuracy:+.1f} pts |")

if __name__ == "__main__":
    main()
