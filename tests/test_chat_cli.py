"""`stepaudio chat`: one question, a multi-turn session with history, a private server (--model), clear errors."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest
import soundfile as sf

from model_fixtures import tiny_dir  # noqa: F401  (fixture)
from server_fixtures import reference, running_server, tone  # noqa: F401
from stepaudio.chat_cli import DIM, HELP, RESET, run_chat
from stepaudio.cli import SIGPIPE_EXIT, build_parser, main
from stepaudio.client import user_message
from stepaudio.engine.sampling import SamplingParams

FLAGS = ["--temperature", "0", "--max-tokens", "12", "--max-thinking-tokens", "4"]
PARAMS = SamplingParams(temperature=0, max_tokens=12, max_thinking_tokens=4)


def shown(reasoning: str, answer: str) -> str:
    return f"── thinking ──\n{reasoning}\n── answer ──\n{answer}\n"


@pytest.fixture(scope="module")
def api_base(reference):  # noqa: F811
    with running_server(reference, reasoning_parser="step_audio") as url:
        yield url + "/v1"


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("clip") / "clip.ogg"
    sf.write(path, tone(30.0, 400, sr=24000), 24000)  # 30 s: two input_audio parts
    return path


def test_one_question_about_audio(api_base, clip, reference, capsys):  # noqa: F811
    assert main(["chat", "--api-base", api_base, "--audio", str(clip), *FLAGS, "What is this sound?"]) == 0
    message = user_message("What is this sound?", clip)
    assert len(message["content"]) == 3
    [want] = reference.chat([[message]], PARAMS)
    assert capsys.readouterr().out == shown(want.completions[0].reasoning, want.completions[0].content)


def test_interactive_session_keeps_the_history(api_base, clip, reference):  # noqa: F811
    args = build_parser().parse_args(["chat", "--api-base", api_base, *FLAGS, "--system", "Be brief."])
    out = io.StringIO()
    run_chat(args, inp=io.StringIO(f"Hello there\n/audio {clip}\nAnd this?\n/exit\n"), out=out)
    system = {"role": "system", "content": "Be brief."}
    first = user_message("Hello there")
    [one] = reference.chat([[system, first]], PARAMS)
    second = user_message("And this?", clip)
    history = [system, first, {"role": "assistant", "content": one.completions[0].content}, second]
    [two] = reference.chat([history], PARAMS)
    text = out.getvalue()
    assert shown(one.completions[0].reasoning, one.completions[0].content) in text
    assert shown(two.completions[0].reasoning, two.completions[0].content) in text
    assert text.count("you> ") == 4  # two questions, the /audio command, /exit


def test_model_dir_starts_a_private_server(tiny_dir, reference, capsys):  # noqa: F811
    assert main(["chat", "--model", str(tiny_dir), "--kv-cache-memory-gb", "0.01", *FLAGS, "Hi"]) == 0
    [want] = reference.chat([[user_message("Hi")]], PARAMS)
    assert capsys.readouterr().out == shown(want.completions[0].reasoning, want.completions[0].content)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_thinking_is_dimmed_on_a_terminal(api_base):
    args = build_parser().parse_args(["chat", "--api-base", api_base, *FLAGS, "Hi"])
    out = Terminal()
    run_chat(args, out=out)
    thinking, answer = out.getvalue().split("── answer ──")
    assert f"{DIM}── thinking ──{RESET}" in thinking and thinking.count(DIM) >= 2
    assert DIM not in answer.split(RESET)[-1]


@pytest.mark.parametrize("argv", [["chat", "--model", "/nonexistent/model", "hi"],
                                  ["chat", "--api-base", "http://127.0.0.1:9/v1", "hi"]])
def test_errors_are_one_line(argv, capsys):
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("stepaudio chat: error: ") and err.count("\n") == 1


def test_a_refused_request_is_one_line(reference, capsys):  # noqa: F811
    with running_server(reference, api_key="secret") as url:
        assert main(["chat", "--api-base", url + "/v1", "hi"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("stepaudio chat: error: HTTP 401: ") and err.count("\n") == 1


def test_the_api_base_may_leave_out_v1(api_base, capsys):
    assert main(["chat", "--api-base", api_base, *FLAGS, "Hi"]) == 0
    with_v1 = capsys.readouterr().out
    assert main(["chat", "--api-base", api_base.removesuffix("/v1"), *FLAGS, "Hi"]) == 0
    assert capsys.readouterr().out == with_v1


def test_an_api_base_with_no_api_there_says_what_to_add(api_base, capsys):
    wrong = api_base.removesuffix("/v1") + "/api"
    assert main(["chat", "--api-base", wrong, "Hi"]) == 1
    assert capsys.readouterr().err == (f"stepaudio chat: error: HTTP 404 at {wrong}/models: no OpenAI API at {wrong}; "
                                       "an API base usually ends in /v1\n")


def test_a_missing_audio_file_in_a_session_is_refused_at_once(api_base):
    args = build_parser().parse_args(["chat", "--api-base", api_base, *FLAGS])
    out = io.StringIO()
    run_chat(args, inp=io.StringIO("/audio missing.wav\n/exit\n"), out=out)
    assert out.getvalue() == f"{HELP}\nyou> error: audio file missing.wav does not exist\nyou> "


def test_a_closed_stdout_ends_quietly(api_base):
    """`stepaudio chat ... | head`: the reader goes away; no traceback, no "Broken pipe", SIGPIPE's exit code."""
    chat = subprocess.Popen([sys.executable, "-m", "stepaudio", "chat", "--api-base", api_base, *FLAGS, "Hi"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    chat.stdout.close()   # before the first line is written
    _, err = chat.communicate(timeout=60)
    assert (chat.returncode, err) == (SIGPIPE_EXIT, b"")
