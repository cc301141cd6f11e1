"""LLM: the synchronous offline API, `LLM(model_dir).chat(conversations, params)`."""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..inputs import PreparedPrompt, prepare_chat, resolve_audio_parts
from ..model.loader import load_model
from ..text.tokenizer import StepTokenizer
from .engine import EngineConfig, LLMEngine
from .sampling import SamplingParams, TokenLogprobs


@dataclass
class Completion:
    index: int
    text: str
    reasoning: str
    content: str
    token_ids: list[int]
    finish_reason: str | None
    stop_reason: str | int | None = None
    logprobs: list[TokenLogprobs] = field(default_factory=list)
    completion_tokens: int = 0
    reasoning_tokens: int = 0
    latency_s: float = 0.0  # from generate() until this completion finished (batch-mates share the clock)


@dataclass
class ChatResult:
    request_id: str
    prompt_tokens: int
    audio_tokens: int
    cached_tokens: int
    completions: list[Completion]


class LLM:
    def __init__(self, model_dir: str | Path, *, dtype: str | torch.dtype | None = None, device: str = "cpu",
                 quantization: str | None = None, **engine_options: Any):
        self.tokenizer = StepTokenizer.from_dir(model_dir)
        self.model = load_model(model_dir, dtype=dtype, device=device, quantization=quantization)
        self.engine = LLMEngine(self.model, self.tokenizer, EngineConfig(**engine_options))
        self._ids = itertools.count()

    @classmethod
    def from_model(cls, model: torch.nn.Module, tokenizer: StepTokenizer, **engine_options: Any) -> "LLM":
        """An LLM over a model already in memory (training samples from its current policy this way).
        The engine owns the model from then on (on CPU it prepacks the linears)."""
        llm = cls.__new__(cls)
        llm.tokenizer, llm.model = tokenizer, model
        llm.engine = LLMEngine(model, tokenizer, EngineConfig(**engine_options))
        llm._ids = itertools.count()
        return llm

    def prepare(self, messages: Sequence[dict[str, Any]], **template_options: Any) -> PreparedPrompt:
        """Render one conversation; audio parts carry base64 data, data:/file URLs, paths or arrays."""
        messages, audio = resolve_audio_parts(messages)
        return prepare_chat(self.tokenizer, messages, audio, n_mels=self.model.config.audio.n_mels,
                            formula=self.engine.config.audio_token_formula, **template_options)

    def chat(self, conversations: Sequence[Sequence[dict[str, Any]]], params: SamplingParams | None = None,
             **template_options: Any) -> list[ChatResult]:
        prompts = [self.prepare(c, **template_options) for c in conversations]
        return self.generate(prompts, params)

    def generate(self, prompts: Sequence[PreparedPrompt], params: SamplingParams | None = None) -> list[ChatResult]:
        """Run every prompt to completion with continuous batching; results in input order."""
        params = params or SamplingParams()
        results: dict[str, ChatResult] = {}
        order = []
        for prompt in prompts:
            rid = f"llm-{next(self._ids)}"
            self.engine.add_request(rid, prompt.token_ids, prompt.mels, params)
            order.append(rid)
            results[rid] = ChatResult(rid, 0, 0, 0, [Completion(i, "", "", "", [], None) for i in range(params.n)])
        start = time.perf_counter()
        with torch.inference_mode():
            while self.engine.has_unfinished_requests():
                for out in self.engine.step():
                    if out.error is not None:
                        raise out.error
                    result = results[out.request_id]
                    result.prompt_tokens, result.audio_tokens = out.prompt_tokens, out.audio_tokens
                    result.cached_tokens = out.cached_tokens
                    for d in out.deltas:
                        c = result.completions[d.index]
                        c.text += d.text
                        c.reasoning += d.reasoning
                        c.content += d.content
                        c.token_ids += d.token_ids
                        c.logprobs += d.logprobs
                        c.finish_reason, c.stop_reason = d.finish_reason, d.stop_reason
                        c.completion_tokens, c.reasoning_tokens = d.completion_tokens, d.reasoning_tokens
                        if d.finish_reason is not None:
                            c.latency_s = time.perf_counter() - start
        return [results[rid] for rid in order]
