"""Prompt rendering with the Step-Audio-R1 chat template (spec §5.2), quirks included.

`R1_CHAT_TEMPLATE` is this project's Jinja template; it renders exactly what the template passed
upstream with `--chat-template` renders, including its quirks:
- assistant turns are never followed by `<|EOT|>` (upstream sets a flag inside a nested loop, and
  Jinja scoping discards it);
- `function_output` messages render nothing;
- the generation prompt is `<|BOT|>assistant\\n<think>\\n`.
Messages arrive in the OpenAI shape; like vLLM with `--interleave-mm-strings`, each audio part
becomes an `<audio_patch>` placeholder and parts are joined with "\\n", and the template then drops
the newline after each placeholder.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jinja2.sandbox import ImmutableSandboxedEnvironment

from .tokenizer import AUDIO_PATCH

R1_CHAT_TEMPLATE = r"""
{%- macro render_content(content) -%}
  {%- if content is string -%}
    {{- content.replace('<audio_patch>\n', '<audio_patch>') -}}
  {%- elif content is mapping -%}
    {{- content['value'] if 'value' in content else content['text'] -}}
  {%- elif content is iterable -%}
    {%- for item in content -%}
      {%- if item.type == 'text' -%}
        {{- item['value'] if 'value' in item else item['text'] -}}
      {%- elif item.type == 'audio' -%}
        {{- '<audio_patch>' -}}
      {%- endif -%}
    {%- endfor -%}
  {%- endif -%}
{%- endmacro -%}
{%- set has_system = messages and messages[0]['role'] == 'system' -%}
{%- if tools -%}
  {{- '<|BOT|>system\n' -}}
  {%- if has_system -%}{{- render_content(messages[0]['content']) + '<|EOT|>' -}}{%- endif -%}
  {{- '<|BOT|>tool_json_schemas\n' + tools | tojson + '<|EOT|>' -}}
{%- elif has_system -%}
  {{- '<|BOT|>system\n' + render_content(messages[0]['content']) + '<|EOT|>' -}}
{%- endif -%}
{%- for message in messages -%}
  {%- if message['role'] == 'user' -%}
    {{- '<|BOT|>human\n' + render_content(message['content']) + '<|EOT|>' -}}
  {%- elif message['role'] == 'assistant' -%}
    {#- Upstream quirk kept on purpose: no <|EOT|> after any assistant turn. -#}
    {{- '<|BOT|>assistant\n' + (render_content(message['content']) if message['content'] else '') -}}
  {%- elif message['role'] == 'function_output' -%}
  {%- elif not (loop.first and message['role'] == 'system') -%}
    {{- '<|BOT|>' + message['role'] + '\n' + render_content(message['content']) + '<|EOT|>' -}}
  {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
  {{- '<|BOT|>assistant\n<think>\n' -}}
{%- endif -%}
"""

AUDIO_PART_TYPES = ("input_audio", "audio_url", "audio")


class ChatTemplateError(ValueError):
    """The messages cannot be rendered (bad shape, conflicting flags)."""


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    """`tojson` as transformers defines it for chat templates (plain json.dumps, unicode kept)."""
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _raise(message: str) -> None:
    raise ChatTemplateError(message)


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise
    return env


_ENV = _environment()


def flatten_content(content: Any) -> Any:
    """OpenAI content parts -> one string: text parts and `<audio_patch>` placeholders joined by "\\n"."""
    if not isinstance(content, list):
        return content
    pieces = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            pieces.append(part.get("text", ""))
        elif kind in AUDIO_PART_TYPES:
            pieces.append(AUDIO_PATCH)
        else:
            raise ChatTemplateError(f"unsupported content part type {kind!r}; use text, input_audio or audio_url")
    return "\n".join(pieces)


def count_audio_parts(messages: Sequence[dict[str, Any]]) -> int:
    return sum(1 for m in messages if isinstance(m.get("content"), list)
               for p in m["content"] if isinstance(p, dict) and p.get("type") in AUDIO_PART_TYPES)


def _final_text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    raise ChatTemplateError("continue_final_message needs a final message with string content")


def _cut_after_final_message(rendered: str, final: str) -> str:
    """Keep the prompt up to the end of the final message's content, as transformers does."""
    if final.strip() not in rendered:
        raise ChatTemplateError("continue_final_message is set but the final message does not appear in the "
                                "rendered prompt")
    start = rendered.rindex(final.strip())
    if rendered[start:start + len(final.lstrip())] == final.lstrip():
        return rendered[: start + len(final.lstrip())]
    return rendered[: start + len(final.strip())]


def _is_file(value: str) -> bool:
    """Whether `value` names a file; an inline template (long, with newlines) is not a valid path at all."""
    try:
        return Path(value).is_file()
    except (OSError, ValueError):  # e.g. "File name too long", or a NUL byte
        return False


def load_chat_template(value: str) -> str:
    """A `--chat-template` value, as vLLM takes it: a path to a Jinja file, or the template itself."""
    if _is_file(value):
        return Path(value).read_text()
    if "{{" in value or "{%" in value:
        return value
    raise ChatTemplateError(f"chat template {value!r} is neither a readable file nor a Jinja template")


def render_chat(messages: Sequence[dict[str, Any]], *, tools: list[dict[str, Any]] | None = None,
                add_generation_prompt: bool = True, continue_final_message: bool = False,
                template: str | None = None) -> str:
    """Render OpenAI-shaped messages to the prompt string, as vLLM does with the R1 template."""
    if not messages:
        raise ChatTemplateError("messages must not be empty")
    if add_generation_prompt and continue_final_message:
        raise ChatTemplateError("add_generation_prompt and continue_final_message cannot both be true")
    flat = []
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise ChatTemplateError("every message needs a string 'role'")
        flat.append({**m, "content": flatten_content(m.get("content"))})
    compiled = _ENV.from_string(template or R1_CHAT_TEMPLATE)
    rendered = compiled.render(messages=flat, tools=tools, add_generation_prompt=add_generation_prompt)
    if continue_final_message:
        rendered = _cut_after_final_message(rendered, _final_text(flat[-1]))
    return rendered
