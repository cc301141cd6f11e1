"""Chat messages for an item, built the way the upstream example scripts build them (spec §6).

MMAU / MMSU / MMAR: the question with its options, then the audio. Spoken-MQA: the instruction, then
the audio. Big Bench Audio: the audio, then the instruction. Every request prefills the assistant turn
with "<think>\\n" and continues it (`continue_final_message`), as the upstream client does.
"""

from __future__ import annotations

from typing import Any

from ..client import audio_parts
from .items import EvalItem

MCQ_INSTRUCTION = "Please choose the answer from the following options, do not provide any additional explanations or content: \n"
MATH_INSTRUCTION = "Solve the given math question step by step."
# The upstream Big Bench Audio instruction: "Answer the question above directly with only 'valid' or
# 'invalid', 'yes' or 'no', or a number; do not add any other description."
BBA_INSTRUCTION = '仅用 "valid" 或 "invalid"，"yes" 或 "no"，或者数字来直接回答上面的问题，不要添加任何其他描述。'
THINK_PREFILL = "<think>\n"


def letter(index: int) -> str:
    return chr(65 + index)


def question_text(item: EvalItem) -> str:
    """The text part of the user turn."""
    if item.style == "mcq":
        options = "".join(f"{letter(i)}. {choice}\n" for i, choice in enumerate(item.choices))
        return f"{item.question}\n{MCQ_INSTRUCTION}{options}"
    if item.style == "math":
        return item.question or MATH_INSTRUCTION
    if item.style == "bba":
        return item.question or BBA_INSTRUCTION
    return item.question


def audio_content(item: EvalItem) -> list[dict[str, Any]]:
    """Base64 WAV parts of at most 25 s per file (as the upstream client sends); URLs are left to the server."""
    parts: list[dict[str, Any]] = []
    for source in item.audio:
        if "://" in source and not source.startswith("file://"):
            parts.append({"type": "audio_url", "audio_url": {"url": source}})
        else:
            parts += audio_parts(source.removeprefix("file://"))
    return parts


def build_messages(item: EvalItem) -> list[dict[str, Any]]:
    text = question_text(item)
    text_part = [{"type": "text", "text": text}] if text else []
    audio = audio_content(item)
    content = audio + text_part if item.style == "bba" else text_part + audio
    return [{"role": "user", "content": content},
            {"role": "assistant", "content": THINK_PREFILL}]
