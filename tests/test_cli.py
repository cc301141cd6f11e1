"""The `stepaudio` command line a new user meets: the list of commands, unknown flags named by the command they
were given to, every flag's default in --help, bad values refused as they are parsed, mistakes reported before
anything loads, and --version."""

from __future__ import annotations

import argparse
import sys

import pytest
import torch

from stepaudio import __version__
from stepaudio.cli import build_parser, main
from stepaudio.default_model.assemble import default_model_dir

COMMANDS = """\
commands:
  serve       OpenAI-compatible server (drop-in for vLLM's recipe)
  chat        chat in the terminal, with a server or a local model
  demo        web demo in the browser (Gradio)
  generate    answer one question about an audio file, no server
  make-tiny   write a random tiny checkpoint (for tests)
  talk        one spoken turn over /v1/realtime: think while speaking
  quantize    int8/int4 copy of a checkpoint (compressed-tensors)
  train       train the default model's audio alignment; evaluate
  eval        score a model on an audio benchmark; thinking sweeps
"""


@pytest.fixture(autouse=True)
def columns(monkeypatch):
    """argparse wraps help to the terminal's width: a fixed one, so the text can be asserted exactly."""
    monkeypatch.setenv("COLUMNS", "80")


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    """A default-model cache with nothing in it: any loading of the default model would assemble it here."""
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("STEPAUDIO_CACHE_DIR", str(cache))
    return cache


def test_bare_stepaudio_lists_the_commands_one_line_each(capsys):
    assert main([]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("usage: stepaudio [-h] [--version] COMMAND ...\n") and err == ""
    assert f"\n{COMMANDS}\n" in out
    assert out.endswith("Run 'stepaudio COMMAND --help' for a command's flags.\n")


def test_an_unknown_flag_is_named(capsys):
    with pytest.raises(SystemExit) as exit:
        main(["--frobnicate"])
    assert exit.value.code == 2
    assert capsys.readouterr().err == ("usage: stepaudio [-h] [--version] COMMAND ...\n"
                                       "stepaudio: error: unrecognized arguments: --frobnicate\n")


@pytest.mark.parametrize(("argv", "prog"), [(["serve", "--bogus-flag"], "stepaudio serve"),
                                            (["chat", "hi", "--bogus-flag"], "stepaudio chat"),
                                            (["train", "align", "--out", "x", "--bogus-flag"], "stepaudio train align"),
                                            (["eval", "m.jsonl", "--bogus-flag"], "stepaudio eval run")])
def test_an_unknown_flag_gets_the_usage_of_its_command(argv, prog, capsys):
    with pytest.raises(SystemExit) as exit:
        main(argv)
    assert exit.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"usage: {prog} [-h]")
    assert err.endswith(f"\n{prog}: error: unrecognized arguments: --bogus-flag\n")


def test_a_command_group_alone_lists_its_commands(capsys):
    assert main(["train"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: stepaudio train [-h] COMMAND ...\n")
    assert "\ncommands:\n  align " in out and "\n  evaluate " in out


def _parsers(parser: argparse.ArgumentParser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _parsers(sub)


def test_every_flag_says_its_default_in_help():
    for parser in _parsers(build_parser()):
        help_text = " ".join(parser.format_help().split())
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)) or action.nargs == 0 or (
                    not action.option_strings) or action.required:
                continue   # -h, the command list, switches (off unless given), positional and required ones
            assert action.help, f"{parser.prog} {action.option_strings or action.dest}: no help"
            shown = " ".join(action.help.split())
            if shown.startswith("accepted"):
                continue   # a flag of the official vLLM command that means nothing here
            assert "default" in shown or f"{shown} (default: " in help_text, (parser.prog, action.dest)


def test_serve_and_chat_help_show_their_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    assert "\n  --port PORT           port to listen on (default: 9999)\n" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["chat", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--temperature TEMPERATURE 0 = greedy (the official examples use 0.7) (default: 0.7)" in out


def test_train_align_help_shows_the_recipe_defaults(capsys):
    from stepaudio.train.align import AlignConfig

    with pytest.raises(SystemExit):
        main(["train", "align", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert f"--steps STEPS decoder-stage steps (default: {AlignConfig.steps})" in out
    assert f"--batch-size BATCH_SIZE examples per step (default: {AlignConfig.batch_size})" in out
    assert "--out OUT run folder: state, loss log, align_delta.safetensors --steps" in out  # required: no default


def test_version_says_torch_devices_and_the_default_model_cache(empty_cache, capsys):
    with pytest.raises(SystemExit) as exit:
        main(["--version"])
    assert exit.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"stepaudio {__version__} (Python {sys.version.split()[0]}, torch {torch.__version__})"
    assert lines[1].startswith("devices: cpu")
    assert ("cuda (" in lines[1]) == torch.cuda.is_available()
    assert lines[2] == f"default model: {default_model_dir()} (not assembled yet: the first use builds it)"
    assert default_model_dir().parent == empty_cache and len(lines) == 3


@pytest.mark.parametrize(("argv", "message"), [
    (["chat", "--audio", "missing.wav", "x"], "stepaudio chat: error: audio file missing.wav does not exist"),
    (["chat", "--model", "no-model", "x"], "stepaudio chat: error: model folder no-model does not exist"),
    (["chat", "--device", "tpu", "x"],
     "stepaudio chat: error: --device tpu: not a device torch knows (cpu, cuda, cuda:1, mps, ...)"),
    (["generate", "--audio", "missing.wav"], "stepaudio generate: error: audio file missing.wav does not exist"),
    (["demo", "--model", "no-model"], "stepaudio demo: error: model folder no-model does not exist"),
    (["serve", "no-model"], "stepaudio serve: error: model folder no-model does not exist"),
    (["serve", "--chat-template", "missing.jinja"], None),
    (["eval", "m.jsonl", "--model", "no-model"], "stepaudio eval: error: model folder no-model does not exist"),
    (["train", "align", "--out", "run", "--init-delta", "missing.safetensors"],
     "stepaudio train: error: --init-delta missing.safetensors does not exist"),
    (["train", "evaluate", "--model", "no-model"], "stepaudio train: error: model folder no-model does not exist"),
    (["train", "evaluate", "--families", "pico,festival"], None),
])
def test_mistakes_are_reported_before_anything_loads(argv, message, empty_cache, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"stepaudio {argv[0]}: error: ")
    if message is not None:
        assert err == message + "\n"
    assert list(empty_cache.iterdir()) == []   # the default model was not assembled, so nothing was loaded


def test_device_without_cuda_is_refused_before_loading(empty_cache, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    assert main(["serve", "--device", "cuda"]) == 1
    assert capsys.readouterr().err == ("stepaudio serve: error: --device cuda: no CUDA device here"
                                       + ("" if torch.version.cuda else f"; torch {torch.__version__} is a CPU build")
                                       + "\n")
    assert list(empty_cache.iterdir()) == []


@pytest.mark.parametrize(("argv", "message"), [
    (["chat", "--temperature", "-1", "x"], "argument --temperature: must be a number of at least 0, got -1"),
    (["chat", "--max-tokens", "0", "x"], "argument --max-tokens: must be a whole number of at least 1, got 0"),
    (["chat", "--top-p", "2", "x"], "argument --top-p: must be a number in (0, 1], got 2"),
    (["chat", "--api-base", "localhost:9999", "x"],
     "argument --api-base: not an http(s) URL like http://127.0.0.1:9999/v1: 'localhost:9999'"),
    (["serve", "--port", "99999"], "argument --port: must be a port number from 0 to 65535, got 99999"),
    (["serve", "--max-num-seqs", "many"], "argument --max-num-seqs: must be a whole number of at least 1, got 'many'"),
    (["eval", "m.jsonl", "--concurrency", "0"],
     "argument --concurrency: must be a whole number of at least 1, got 0"),
])
def test_bad_values_get_the_commands_usage(argv, message, capsys):
    with pytest.raises(SystemExit) as exit:
        main(argv)
    assert exit.value.code == 2
    prog = "stepaudio eval run" if argv[0] == "eval" else f"stepaudio {argv[0]}"
    assert capsys.readouterr().err.endswith(f"\n{prog}: error: {message}\n")
