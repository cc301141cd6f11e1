"""The /talk page in headless Debian chromium with a fake microphone (a spoken question, then silence):
the page sends microphone audio, the server's VAD ends the turn, the answer's audio comes back and is
scheduled for playback, and the turn's first-audio latency is shown. Screenshot: test-artifacts/talk.png."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from demo_fixtures import ARTIFACTS, browser  # noqa: F401  (fixture)
from model_fixtures import tiny_dir  # noqa: F401  (fixture)
from server_fixtures import reference, running_server  # noqa: F401  (fixtures)

pytest.importorskip("piper")
KNOBS = {"temperature": 1.0, "seed": 3, "think_segment_tokens": 8, "response_segment_tokens": 6,
         "max_thinking_tokens": 40, "max_response_tokens": 40}


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """What the fake microphone plays (in a loop): a spoken question and 30 s of silence
    (time for the answer on a busy machine, before the loop speaks again and barges in), 16 kHz."""
    folder = tmp_path_factory.mktemp("mic")
    spoken = folder / "spoken.wav"
    if subprocess.run(["which", "espeak-ng"], capture_output=True).returncode:
        pytest.skip("espeak-ng is not installed")
    subprocess.run(["espeak-ng", "-w", str(spoken), "What is seven plus five?"], check=True, capture_output=True)
    wav, sr = sf.read(spoken, dtype="float32")
    out = folder / "mic.wav"
    sf.write(out, np.concatenate([np.zeros(sr // 2, np.float32), wav, np.zeros(30 * sr, np.float32)]), sr)
    return out


def test_talk_page_sends_the_microphone_and_plays_the_answer(browser, reference) -> None:  # noqa: F811
    with running_server(reference) as url:
        context = browser.new_context(viewport={"width": 1200, "height": 800}, permissions=["microphone"])
        page = context.new_page()
        page.set_default_timeout(300_000)
        page.goto(url + "/talk")
        page.select_option("#schedule", "speak-first")
        page.evaluate("window.talkOptions = " + json.dumps(KNOBS))
        page.click("#start")
        page.wait_for_function("window.talkStats.turns.some(t => ['completed', 'incomplete'].includes(t.status))")
        stats = page.evaluate("window.talkStats")
        assert stats["appendsSent"] > 10
        assert stats["framesReceived"] > 0.2 * 24000 and stats["framesScheduled"] == stats["framesReceived"]
        assert page.locator("#turns tbody tr").count() >= 1
        row = page.locator("#turns tbody tr", has_text=re.compile("completed|incomplete")).first.inner_text()
        assert row.count(" s") == 2   # first-audio latency, as the browser and the server measured it
        assert page.locator("#words").inner_text().strip()
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "talk.png"), full_page=True)
        page.click("#stop")
        context.close()
