"""The demo's pure parts: thinking-budget mapping, sampling fields, error messages, the audio budget, turns
(25 s chunking, bad input), history, the hide-thinking filter, audio pictures, Stop flags, one streamed turn,
and the `stepaudio demo` command's one-line errors."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf

from demo_fixtures import free_port, page_served, wait_until
from model_fixtures import tiny_dir  # noqa: F401  (fixture)
from server_fixtures import MODEL, reference, running_server, tone  # noqa: F401
from stepaudio.cli import main
from stepaudio.client import ServerError
from stepaudio.demo.app import NO_ANSWER, STOPPED_NOTE, stream_turn
from stepaudio.demo.backend import Backend, StopSignals, error_message, sampling_options, thinking_options
from stepaudio.demo.plots import CHUNK_MARK, SPEC_HEIGHT, WAVE_HEIGHT, WIDTH, audio_picture, waveform_strip
from stepaudio.demo.session import AudioBudget, Conversation, InputProblem, prepare_turn, visible


@pytest.fixture
def wav_file(tmp_path: Path):
    def write(seconds: float, sr: int = 16000) -> str:
        path = tmp_path / f"clip{seconds}.wav"
        sf.write(path, tone(seconds, sr=sr), sr)
        return str(path)
    return write


def test_thinking_modes_map_to_request_fields():
    assert thinking_options("off", 100) == {"thinking": "off"}
    assert thinking_options("limited", 100) == {"thinking": "on", "max_thinking_tokens": 100}
    assert thinking_options("unlimited", 100) == {"thinking": "on"}
    with pytest.raises(ValueError, match="thinking mode"):
        thinking_options("sometimes", 1)


def test_sampling_options_from_the_sliders():
    assert sampling_options(512.0, 0.5, 0.9, "limited", 64.0) == {
        "max_tokens": 512, "temperature": 0.5, "top_p": 0.9, "thinking": "on", "max_thinking_tokens": 64}


def test_errors_read_as_one_message_without_a_traceback():
    text = error_message(ServerError("HTTP 400: audio is 12.0 s, more than the 10 s allowed"))
    assert text.startswith("**The server could not answer.**") and "12.0 s" in text
    other = error_message(RuntimeError("boom"))
    assert "RuntimeError" in other and "boom" in other and "Traceback" not in other


def test_audio_budget_counts_used_and_left():
    budget = AudioBudget(limit_seconds=60)
    budget.spend(25.5)
    assert budget.left_seconds == pytest.approx(34.5)
    assert budget.note() == "Audio budget: **25.5 s used**, 34.5 s left of 60.0 s per conversation"
    budget.check(34.5)  # exactly what is left fits
    with pytest.raises(InputProblem, match="only 34.5 s"):
        budget.spend(40)
    assert budget.used_seconds == 25.5


def test_default_budget_is_upstreams_ten_megabytes_of_wav():
    assert AudioBudget().limit_seconds * 16000 * 2 == 10 * 2**20
    assert AudioBudget().note() == "Audio budget: **0.0 s used**, 327.7 s left of 327.7 s per conversation"


@pytest.mark.parametrize("used", [0.0, 0.04, 0.05, 12.34, 12.35, 100.26, 327.64, 327.68])
def test_the_budget_notes_figures_add_up(used):
    used_shown, left_shown, limit_shown = re.fullmatch(
        r"Audio budget: \*\*(\d+\.\d) s used\*\*, (\d+\.\d) s left of (\d+\.\d) s per conversation",
        AudioBudget(used_seconds=used).note()).groups()
    assert round(float(used_shown) + float(left_shown), 1) == float(limit_shown) == 327.7
    assert float(used_shown) == pytest.approx(used, abs=0.05)


def test_long_audio_goes_as_25_second_parts_after_the_text(wav_file):
    turn = prepare_turn(" What is it? ", wav_file(60.0, sr=8000), AudioBudget())
    kinds = [part["type"] for part in turn.message["content"]]
    assert kinds == ["text", "input_audio", "input_audio", "input_audio"]   # 25 + 25 + 10 s
    assert turn.message["content"][0]["text"] == "What is it?"
    assert turn.audio_seconds == pytest.approx(60.0)


def test_bad_input_is_refused_with_a_reason(wav_file, tmp_path):
    with pytest.raises(InputProblem, match="Nothing to send"):
        prepare_turn("  ", None, AudioBudget())
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"not audio at all" * 10)
    with pytest.raises(InputProblem, match="Could not read that audio"):
        prepare_turn("", str(junk), AudioBudget())
    with pytest.raises(InputProblem, match="audio budget"):
        prepare_turn("", wav_file(12.0), AudioBudget(limit_seconds=10))


def test_history_and_system_prompt_go_with_each_turn(wav_file):
    conv = Conversation(AudioBudget(limit_seconds=30))
    first = prepare_turn("", wav_file(4.0), conv.budget)
    conv.remember(first, "a tone")
    second = prepare_turn("Louder?", None, conv.budget)
    messages = conv.request_messages("  Be brief. ", second)
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[0]["content"] == "Be brief." and messages[2]["content"] == "a tone"
    assert conv.request_messages("", second)[0]["role"] == "user"
    assert conv.budget.used_seconds == pytest.approx(4.0)


def test_hiding_thinking_keeps_everything_else():
    shown = [{"role": "user", "content": "hi"},
             {"role": "assistant", "content": "hmm", "metadata": {"title": "Thinking"}},
             {"role": "assistant", "content": "hello"}]
    assert visible(shown, True) == shown
    assert visible(shown, False) == [shown[0], shown[2]]


def test_audio_picture_has_waveform_over_spectrogram_and_chunk_marks():
    picture = audio_picture(tone(30.0))
    assert picture.size == (WIDTH, WAVE_HEIGHT + 4 + SPEC_HEIGHT) and picture.mode == "RGB"
    strip = waveform_strip(tone(60.0))
    marked = np.all(strip[-1] == CHUNK_MARK, axis=-1).nonzero()[0]
    assert list(marked) == [WIDTH * 25 // 60, WIDTH * 50 // 60]
    assert audio_picture(np.zeros(100, dtype=np.float32)).size[0] == WIDTH   # tiny, silent clips draw too


def test_stop_flags_are_per_session():
    signals = StopSignals()
    mine, theirs = signals.fresh("a"), signals.fresh("b")
    signals.stop("a")
    signals.stop("nobody")
    assert mine.is_set() and not theirs.is_set()
    assert not signals.fresh("a").is_set()   # a new turn starts unstopped


class FakeBackend:
    def __init__(self, pieces, error: Exception | None = None, stop_after: int | None = None):
        self.pieces, self.error, self.stop_after = pieces, error, stop_after

    def stream(self, messages, options, stop: threading.Event):
        for i, piece in enumerate(self.pieces):
            if i == self.stop_after:
                stop.set()
                return
            yield piece
        if self.error:
            raise self.error


def run_turn(backend, stop: threading.Event | None = None) -> Conversation:
    conv = Conversation()
    turn = prepare_turn("hi", None, conv.budget)
    conv.shown.append({"role": "user", "content": "hi"})
    for _ in stream_turn(backend, conv, turn, conv.request_messages("", turn), {}, stop or threading.Event()):
        pass
    return conv


def test_a_turn_shows_thinking_apart_from_the_answer_and_is_remembered():
    conv = run_turn(FakeBackend([("thinking", "let me "), ("thinking", "listen"), ("answer", "**A** tone")]))
    user, thinking, answer = conv.shown
    assert thinking["content"] == "let me listen" and thinking["metadata"]["status"] == "done"
    assert answer == {"role": "assistant", "content": "**A** tone"}
    assert conv.messages[-1] == {"role": "assistant", "content": "**A** tone"}


def test_a_stopped_turn_says_so_and_keeps_what_came():
    conv = run_turn(FakeBackend([("answer", "par"), ("answer", "tial")], stop_after=1))
    assert conv.shown[-1]["content"] == "par" + STOPPED_NOTE
    assert conv.messages[-1]["content"] == "par"


def test_a_failed_turn_is_a_chat_message_and_not_remembered():
    conv = run_turn(FakeBackend([("thinking", "hm")], error=ServerError("HTTP 400: too long")))
    assert conv.shown[-1]["content"].startswith("**The server could not answer.** HTTP 400")
    assert conv.messages == []


def test_thinking_without_an_answer_says_so():
    assert run_turn(FakeBackend([("thinking", "hm")])).shown[-1]["content"] == NO_ANSWER


def test_demo_command_errors_are_one_line(capsys, tmp_path):
    assert main(["demo", "--model", str(tmp_path / "missing")]) == 1
    assert main(["demo", "--api-base", "http://127.0.0.1:9/v1"]) == 1
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and all(ln.startswith("stepaudio demo: error: ") for ln in lines)
    assert "does not exist" in lines[0] and "127.0.0.1:9" in lines[1]


def test_demo_on_a_busy_port_says_so_before_reaching_the_model(capsys):
    with socket.create_server(("127.0.0.1", 0)) as other:
        port = other.getsockname()[1]
        assert main(["demo", "--api-base", "http://127.0.0.1:9/v1", "--port", str(port)]) == 1
    assert capsys.readouterr().err == f"stepaudio demo: error: port {port} is in use; pass --port\n"


def test_demo_command_serves_the_page_for_a_local_checkpoint(tiny_dir):  # noqa: F811
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "stepaudio", "demo", "--model", str(tiny_dir), "--port",
                                str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_until(lambda: process.poll() is not None or page_served(port), seconds=60, what="page served")
        assert process.poll() is None, process.stdout.read()
        assert "Step-Audio-R1" in httpx.get(f"http://127.0.0.1:{port}/config").text
    finally:
        process.terminate()
        process.wait(10)


def test_backend_splits_raw_thinking_from_a_server_without_the_reasoning_parser(reference):  # noqa: F811
    with running_server(reference) as url:   # content carries "...</think>answer", as upstream sends it
        backend = Backend(url + "/v1", MODEL)
        messages = [{"role": "user", "content": "Hello"}]
        options = {"max_tokens": 24, "temperature": 0, **thinking_options("limited", 6)}
        pieces = list(backend.stream(messages, options, threading.Event()))
    kinds = [kind for kind, _ in pieces]
    assert kinds[0] == "thinking" and "answer" in kinds
    assert not any("</think>" in text for _, text in pieces)
