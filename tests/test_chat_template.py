"""The R1 chat template renders the strings spec §5.2 derives, quirks included."""

from __future__ import annotations

import pytest

from stepaudio.text.chat_template import R1_CHAT_TEMPLATE, ChatTemplateError, render_chat

AUDIO = {"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}
GEN = "<|BOT|>assistant\n<think>\n"


def text(t: str) -> dict:
    return {"type": "text", "text": t}


@pytest.mark.parametrize("messages,kwargs,expected", [
    pytest.param([{"role": "user", "content": "Hi"}], {}, "<|BOT|>human\nHi<|EOT|>" + GEN, id="single-turn"),
    pytest.param([{"role": "user", "content": [text("Q"), AUDIO]}], {},
                 "<|BOT|>human\nQ\n<audio_patch><|EOT|>" + GEN, id="text-before-audio"),
    pytest.param([{"role": "user", "content": [AUDIO, text("Q")]}], {},
                 "<|BOT|>human\n<audio_patch>Q<|EOT|>" + GEN, id="audio-before-text"),
    pytest.param([{"role": "user", "content": [AUDIO, AUDIO, AUDIO]}], {},
                 "<|BOT|>human\n<audio_patch><audio_patch><audio_patch><|EOT|>" + GEN, id="three-chunks"),
    pytest.param([{"role": "system", "content": "You are an audio expert."}, {"role": "user", "content": "Hi"}], {},
                 "<|BOT|>system\nYou are an audio expert.<|EOT|><|BOT|>human\nHi<|EOT|>" + GEN, id="system"),
    pytest.param([{"role": "user", "content": [AUDIO, text("What is it?")]},
                  {"role": "assistant", "content": "<think>\nr\n</think>\nA dog."},
                  {"role": "user", "content": "Louder?"}], {},
                 "<|BOT|>human\n<audio_patch>What is it?<|EOT|><|BOT|>assistant\n<think>\nr\n</think>\nA dog."
                 "<|BOT|>human\nLouder?<|EOT|>" + GEN, id="multi-turn-no-eot-after-assistant"),
    pytest.param([{"role": "human", "content": "Hi"}], {"add_generation_prompt": False},
                 "<|BOT|>human\nHi<|EOT|>", id="human-role-no-generation-prompt"),
    pytest.param([{"role": "user", "content": "Q"}, {"role": "function_output", "content": "dropped"},
                  {"role": "tool", "content": "42"}, {"role": "input", "content": "search result"},
                  {"role": "system", "content": "late"}], {},
                 "<|BOT|>human\nQ<|EOT|><|BOT|>tool\n42<|EOT|><|BOT|>input\nsearch result<|EOT|>"
                 "<|BOT|>system\nlate<|EOT|>" + GEN, id="other-roles-and-function-output-dropped"),
    pytest.param([{"role": "user", "content": "Q"}, {"role": "assistant", "content": None}], {},
                 "<|BOT|>human\nQ<|EOT|><|BOT|>assistant\n" + GEN, id="empty-assistant"),
])
def test_renderings(messages, kwargs, expected):
    assert render_chat(messages, **kwargs) == expected


TOOLS = [{"type": "function", "function": {"name": "search", "description": "搜索工具",
                                           "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}}]
TOOLS_JSON = ('[{"type": "function", "function": {"name": "search", "description": "搜索工具", "parameters": '
              '{"type": "object", "properties": {"q": {"type": "string"}}}}}]')


def test_tools_with_system():
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}]
    assert render_chat(messages, tools=TOOLS) == (
        f"<|BOT|>system\nS<|EOT|><|BOT|>tool_json_schemas\n{TOOLS_JSON}<|EOT|><|BOT|>human\nQ<|EOT|>" + GEN)


def test_tools_without_system_leaves_a_bare_system_header():
    assert render_chat([{"role": "user", "content": "Q"}], tools=TOOLS) == (
        f"<|BOT|>system\n<|BOT|>tool_json_schemas\n{TOOLS_JSON}<|EOT|><|BOT|>human\nQ<|EOT|>" + GEN)


def test_continue_final_message_matches_generation_prompt():
    """The official client prefills "<think>\\n" with continue_final_message: same prompt as the generation prompt."""
    messages = [{"role": "user", "content": [text("Q"), AUDIO]}]
    prefilled = render_chat(messages + [{"role": "assistant", "content": "<think>\n"}],
                            add_generation_prompt=False, continue_final_message=True)
    assert prefilled == render_chat(messages)


def test_continue_final_message_keeps_partial_answer():
    messages = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "<think>\nOkay,"}]
    assert render_chat(messages, add_generation_prompt=False, continue_final_message=True) == (
        "<|BOT|>human\nQ<|EOT|><|BOT|>assistant\n<think>\nOkay,")


@pytest.mark.parametrize("messages,kwargs,message", [
    ([], {}, "empty"),
    ([{"role": "user", "content": "Q"}, {"role": "assistant", "content": "x"}],
     {"add_generation_prompt": True, "continue_final_message": True}, "cannot both"),
    ([{"role": "user", "content": [{"type": "image_url"}]}], {}, "unsupported content part"),
    ([{"content": "no role"}], {}, "role"),
])
def test_bad_messages(messages, kwargs, message):
    with pytest.raises(ChatTemplateError, match=message):
        render_chat(messages, **kwargs)


def test_custom_template_is_used():
    assert render_chat([{"role": "user", "content": "Q"}], template="{{ messages[0].content }}!") == "Q!"


def test_load_chat_template_from_file_or_string(tmp_path):
    from stepaudio.text.chat_template import load_chat_template

    path = tmp_path / "t.jinja"
    path.write_text("{{ messages[0].content }}?")
    assert load_chat_template(str(path)) == "{{ messages[0].content }}?"
    assert load_chat_template("{{ 1 }}") == "{{ 1 }}"
    # The official command passes the whole template inline: longer than any file name may be.
    assert load_chat_template(R1_CHAT_TEMPLATE) == R1_CHAT_TEMPLATE
    with pytest.raises(ChatTemplateError, match="neither a readable file nor a Jinja template"):
        load_chat_template("no-such-file.jinja")
