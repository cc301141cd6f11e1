"""Step-Audio tool calls -> OpenAI tool_calls: the text parser, and the server's per-choice assembly.

The tiny random model never writes a tool call by itself, so the conversion is checked here on text
in the Step-Audio format (spec §5.3); the HTTP round trip with tools is in test_server_chat.py.
"""

from __future__ import annotations

import json

import pytest

from model_fixtures import tiny_dir  # noqa: F401  (fixture)
from stepaudio.engine.outputs import CompletionDelta
from stepaudio.server.choices import ChoiceAssembler
from stepaudio.text.tokenizer import StepTokenizer
from stepaudio.text.tools import ToolCallParser, parse_tool_call_block

CALL = '<tool_call>function\nget_weather\n{"city": "Paris", "unit": "°C"}</tool_call>'
TEXT = "Let me check.\n" + CALL + "\n" + CALL.replace("Paris", "Lyon") + " Done."


def run(parser: ToolCallParser, pieces: list[str]):
    text, calls = "", []
    for piece in pieces:
        t, c = parser.feed(piece)
        text, calls = text + t, calls + c
    return text + parser.finish(), calls


@pytest.mark.parametrize("size", [1, 2, 3, 7, len(TEXT)])
def test_any_split_of_the_stream_gives_the_same_calls(size):
    pieces = [TEXT[i:i + size] for i in range(0, len(TEXT), size)]
    text, calls = run(ToolCallParser({"get_weather"}), pieces)
    assert text == "Let me check.\n\n Done."
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [
        ("get_weather", {"city": "Paris", "unit": "°C"}), ("get_weather", {"city": "Lyon", "unit": "°C"})]


def test_text_that_only_looks_like_a_marker_is_released():
    parser = ToolCallParser(None)
    assert parser.feed("a <tool") == ("a ", [])
    assert parser.feed("box> b") == ("<toolbox> b", [])


@pytest.mark.parametrize("block", ["function\nunknown_tool\n{}", "function\nget_weather\n{not json",
                                   "function\nget_weather", "   "])
def test_invalid_calls_stay_text(block):
    assert parse_tool_call_block(block, {"get_weather"}) is None
    text, calls = run(ToolCallParser({"get_weather"}), [f"x<tool_call>{block}</tool_call>y"])
    assert calls == [] and text == f"x<tool_call>{block}</tool_call>y"


def test_an_unclosed_call_stays_text():
    text, calls = run(ToolCallParser({"get_weather"}), ["<tool_call>function\nget_weather\n{"])
    assert calls == [] and text == "<tool_call>function\nget_weather\n{"


def test_empty_arguments_are_an_empty_object():
    call = parse_tool_call_block("function\nping\n", {"ping"})
    assert call is not None and call.arguments == "{}"


def delta(text: str, finish: str | None = None) -> CompletionDelta:
    return CompletionDelta(index=0, token_ids=[1], text=text, reasoning="", content=text, finish_reason=finish,
                           completion_tokens=1)


def test_the_server_turns_a_call_into_tool_calls_and_finish_reason(tiny_dir):  # noqa: F811
    assembler = ChoiceAssembler(0, StepTokenizer.from_dir(tiny_dir), split_reasoning=True,
                                tool_names={"get_weather"})
    pieces = [assembler.add(delta(TEXT[:20])), assembler.add(delta(TEXT[20:], finish="stop"))]
    calls = [c for p in pieces for c in p.tool_calls]
    assert [c.index for c in calls] == [0, 1] and len({c.id for c in calls}) == 2
    assert calls[0].function.name == "get_weather" and json.loads(calls[1].function.arguments)["city"] == "Lyon"
    assert "".join(p.content for p in pieces) == "Let me check.\n\n Done."
    assert pieces[-1].finish_reason == "tool_calls"


def test_without_tools_the_text_is_left_alone(tiny_dir):  # noqa: F811
    assembler = ChoiceAssembler(0, StepTokenizer.from_dir(tiny_dir), split_reasoning=False, tool_names=None)
    piece = assembler.add(delta(TEXT, finish="stop"))
    assert piece.content == TEXT and piece.tool_calls == [] and piece.finish_reason == "stop"
