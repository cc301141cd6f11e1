"""Tokenizer and chat template for Step-Audio prompts."""

from .chat_template import R1_CHAT_TEMPLATE, ChatTemplateError, count_audio_parts, render_chat
from .tokenizer import StepTokenizer, TokenizerError

__all__ = ["R1_CHAT_TEMPLATE", "ChatTemplateError", "StepTokenizer", "TokenizerError", "count_audio_parts",
           "render_chat"]
