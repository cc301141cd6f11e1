"""A validated request -> what the engine takes: prompt ids, mel chunks and SamplingParams.

Every check that can refuse a request runs here, before the engine sees it, so a refusal is a
4xx response rather than a failed stream: audio part count, media policy, decodable audio, total
audio length, template errors, prompt length, and the sampling values.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import jinja2

from ..audio.io import AudioError, AudioTooLong
from ..engine.engine import LLMEngine
from ..engine.sampling import SamplingParams
from ..inputs import PreparedPrompt, prepare_chat, resolve_audio_parts
from ..text.chat_template import ChatTemplateError
from .errors import bad_request
from .media import audio_parts, fetch_remote_audio, inline_audio
from .protocol import ChatCompletionRequest, ChatMessage, ToolDefinition
from .settings import ServerSettings

PREPARE_THREADS = 4
# SamplingParams' messages start with the field name: "top_p must be in (0, 1], got 2.0."
_PARAM_FIELDS = {"n", "temperature", "top_p", "top_k", "min_p", "repetition_penalty", "presence_penalty",
                 "frequency_penalty", "max_tokens", "min_tokens", "max_thinking_tokens", "top_logprobs", "stop"}


@dataclass
class EngineInputs:
    prompt: PreparedPrompt
    params: SamplingParams


class RequestPreparer:
    def __init__(self, engine: LLMEngine, settings: ServerSettings):
        self.engine = engine
        self.settings = settings
        # Decoding audio gets threads of its own, so a burst of uploads never delays the engine's steps
        # (which run in the event loop's default executor).
        self._pool = ThreadPoolExecutor(max_workers=PREPARE_THREADS, thread_name_prefix="stepaudio-prepare")

    async def chat(self, request: ChatCompletionRequest) -> EngineInputs:
        self._check_unsupported(request)
        prompt = await self.prompt(request.messages, tools=request.tools,
                                   add_generation_prompt=request.add_generation_prompt,
                                   continue_final_message=request.continue_final_message)
        # The engine closes the think block for thinking="off"; count those tokens in the length checks.
        prompt = replace(prompt, token_ids=self.engine.apply_thinking_mode(prompt.token_ids, request.thinking))
        self.check_prompt_length(prompt)
        return EngineInputs(prompt, self.sampling_params(request, len(prompt.token_ids)))

    async def prompt(self, messages: list[ChatMessage], *, tools: list[ToolDefinition] | None,
                     add_generation_prompt: bool, continue_final_message: bool) -> PreparedPrompt:
        """Render and tokenize the conversation, with every audio part decoded and cut into 25 s chunks."""
        dicts = [m.model_dump(exclude_none=True) for m in messages]
        count = len(audio_parts(dicts))
        if count > self.settings.max_audio_parts:
            raise bad_request(f"the request has {count} audio parts; at most {self.settings.max_audio_parts} "
                              "are allowed (--limit-mm-per-prompt)", code="too_many_audio_parts",
                              param="messages")
        dicts = await fetch_remote_audio(dicts, self.settings)
        template_tools = [t.template_dict() for t in tools] if tools else None
        return await asyncio.get_running_loop().run_in_executor(
            self._pool, self._render, dicts, template_tools, add_generation_prompt, continue_final_message)

    def _render(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None,
                add_generation_prompt: bool, continue_final_message: bool) -> PreparedPrompt:
        try:
            messages, chunks = resolve_audio_parts(inline_audio(messages, self.settings),
                                                   max_audio_seconds=self.settings.max_audio_seconds)
            return prepare_chat(self.engine.tokenizer, messages, chunks, n_mels=self.engine.model.config.audio.n_mels,
                                formula=self.engine.config.audio_token_formula, template=self.settings.chat_template,
                                tools=tools, add_generation_prompt=add_generation_prompt,
                                continue_final_message=continue_final_message)
        except AudioTooLong as e:
            raise bad_request(f"the request has {'' if e.exact else 'more than '}{e.seconds:.1f} s of audio; at most "
                              f"{self.settings.max_audio_seconds:g} s are allowed (--max-audio-seconds)",
                              code="audio_too_long", param="messages") from None
        except AudioError as e:
            raise bad_request(str(e), code="invalid_audio", param="messages") from None
        except (ChatTemplateError, jinja2.TemplateError) as e:
            raise bad_request(f"cannot render the messages: {e}", code="invalid_messages",
                              param="messages") from None
        except ValueError as e:  # e.g. a literal <audio_patch> in text with no audio behind it
            raise bad_request(str(e), code="invalid_messages", param="messages") from None

    def check_prompt_length(self, prompt: PreparedPrompt) -> None:
        limit = self.engine.max_model_len
        if len(prompt.token_ids) >= limit:
            raise bad_request(f"This model's maximum context length is {limit} tokens. However, your request has "
                              f"{len(prompt.token_ids)} input tokens ({prompt.num_audio_tokens} of them audio). "
                              "Please reduce the length of the messages or the audio.",
                              code="context_length_exceeded", param="messages")

    def _check_unsupported(self, request: ChatCompletionRequest) -> None:
        if request.tool_choice not in (None, "auto", "none"):
            raise bad_request("only tool_choice 'auto' and 'none' are supported (no guided decoding)",
                              code="unsupported_value", param="tool_choice")
        if request.response_format and request.response_format.get("type") != "text":
            raise bad_request("response_format other than 'text' is not supported (no guided decoding)",
                              code="unsupported_value", param="response_format")
        if request.top_logprobs is not None and not request.logprobs:
            raise bad_request("top_logprobs needs logprobs to be true", param="top_logprobs")
        if request.n > self.engine.config.max_num_seqs:
            raise bad_request(f"n must be at most --max-num-seqs={self.engine.config.max_num_seqs}, got {request.n}.",
                              param="n")

    def sampling_params(self, request: ChatCompletionRequest, prompt_len: int) -> SamplingParams:
        """vLLM's mapping: max_completion_tokens wins over max_tokens, and both are clamped to the room left
        in max_model_len (so the official examples' max_tokens=32000 works with a shorter context)."""
        options: dict[str, Any] = {
            k: v for k in ("temperature", "top_p", "top_k", "min_p", "repetition_penalty", "presence_penalty",
                           "frequency_penalty", "seed", "stop", "max_thinking_tokens")
            if (v := getattr(request, k)) is not None}
        max_tokens = request.max_completion_tokens or request.max_tokens
        if max_tokens is not None:
            options["max_tokens"] = min(max_tokens, self.engine.max_model_len - prompt_len)
        # Ids past the vocabulary pass through (the official client sends 151665 to any model; the sampler
        # ignores ids it has no logits for). Negative ids can never be sampled either: dropped, not refused.
        options["stop_token_ids"] = [t for t in request.stop_token_ids or [] if t >= 0]
        try:
            return SamplingParams(
                n=request.n, min_tokens=request.min_tokens, ignore_eos=request.ignore_eos,
                skip_special_tokens=request.skip_special_tokens and not request.wants_tool_calls,
                include_stop_str_in_output=request.include_stop_str_in_output,
                logprobs=(request.top_logprobs or 0) if request.logprobs else None,
                thinking=request.thinking, **options)
        except ValueError as e:
            field = str(e).split(" ", 1)[0]
            field = "top_logprobs" if field == "logprobs" else field  # the request's name for that count
            raise bad_request(str(e), param=field if field in _PARAM_FIELDS else None) from None

