"""LLMEngine: requests in, streamed outputs out; the one place that owns state across requests."""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass

import torch

from ..audio.features import num_audio_tokens
from ..model.packed_linear import is_packed, pack_decoder
from ..model.step_audio import StepAudioForCausalLM
from ..text.reasoning import THINK_END, THINK_START
from ..text.tokenizer import StepTokenizer
from .block_manager import BlockManager
from .kv_cache import KVPool
from .outputs import CompletionDelta, RequestOutput
from .runner import EncoderCache, ModelRunner
from .sampling import Sampler, SamplerOutput, SamplingParams, SamplingRow, child_seed, make_generator
from .scheduler import DecodeStep, PrefillStep, Scheduler
from .sequence import AudioChunk, Sequence
from .text_state import SequenceText

# Appended by the engine when the thinking budget runs out; the model then writes its answer.
THINK_CLOSE = "\n</think>\n"


class RequestError(ValueError):
    """A request the engine refuses before it takes any memory (too long, bad audio count, ...)."""


@dataclass
class EngineConfig:
    max_num_seqs: int = 16
    max_model_len: int | None = None          # default: the model's max_position_embeddings
    max_num_batched_tokens: int = 2048        # largest prefill chunk per step
    block_size: int = 16
    num_kv_blocks: int | None = None          # default: from kv_cache_memory_gb
    kv_cache_memory_gb: float = 1.0
    enable_prefix_caching: bool = True
    encoder_cache_size: int = 64              # audio chunks kept encoded
    audio_token_formula: str = "vllm"
    compile_decode: bool = False              # torch.compile the decode step (first steps pay the compile)
    pack_weights: bool = True                 # CPU: prepack the LLM's linears for oneDNN (see model/packed_linear)


@dataclass
class _Request:
    request_id: str
    seqs: list[Sequence]
    texts: dict[int, SequenceText]
    audio_tokens: int


class LLMEngine:
    """Owns the model it is given: on CPU it swaps the LLM's linears for prepacked ones (faster decode;
    the model stays usable for inference but no longer has those weights as parameters)."""

    def __init__(self, model: StepAudioForCausalLM, tokenizer: StepTokenizer, config: EngineConfig | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.config = config = config or EngineConfig()
        if config.compile_decode and is_packed(model):
            raise ValueError("compile_decode needs unpacked weights, and an engine without compile_decode has "
                             "already packed this model's linears: load the model again")
        if config.pack_weights and not config.compile_decode:  # compiling with freezing packs them itself
            pack_decoder(model)
        text = model.config.text
        self.max_model_len = min(config.max_model_len or text.max_position_embeddings, text.max_position_embeddings)
        dtype = model.dtype
        per_block = KVPool.bytes_per_block(text.num_hidden_layers, config.block_size, text.num_key_value_heads,
                                           text.head_dim, dtype)
        num_blocks = config.num_kv_blocks or max(1, int(config.kv_cache_memory_gb * 2**30) // per_block)
        self.pool = KVPool(text.num_hidden_layers, num_blocks, config.block_size, text.num_key_value_heads,
                           text.head_dim, dtype, model.device)
        self.blocks = BlockManager(num_blocks, config.block_size, config.enable_prefix_caching)
        self.scheduler = Scheduler(self.blocks, config.max_num_seqs, config.max_num_batched_tokens)
        self.encoder_cache = EncoderCache(model, config.encoder_cache_size, config.audio_token_formula)
        self.runner = ModelRunner(model, self.pool, self.encoder_cache, config.compile_decode)
        self.sampler = Sampler(eos_token_ids=tokenizer.eos_token_ids)
        self.requests: dict[str, _Request] = {}
        self._seq_ids = itertools.count()
        self._think_close_ids = tokenizer.encode(THINK_CLOSE)
        self._think_open_ids = tokenizer.encode("<think>\n")

    @property
    def kv_capacity_tokens(self) -> int:
        return self.blocks.num_blocks * self.blocks.block_size

    # ---- requests -------------------------------------------------------------------------------

    def add_request(self, request_id: str, prompt_ids: list[int], mels: list[torch.Tensor],
                    params: SamplingParams) -> None:
        """Queue a request: prompt ids with one expanded audio block per mel chunk, in order."""
        if request_id in self.requests:
            raise RequestError(f"request id {request_id!r} is already in use")
        prompt_ids = self.apply_thinking_mode(prompt_ids, params.thinking)
        audio = [self._audio_chunk(m) for m in mels]
        self._check_request(prompt_ids, audio, params)
        in_reasoning = self._prompt_leaves_think_open(prompt_ids)
        seqs, texts = [], {}
        for index in range(params.n):
            seq = Sequence(seq_id=next(self._seq_ids), request_id=request_id, index=index, prompt_ids=prompt_ids,
                           audio=audio, params=params, audio_patch_id=self.tokenizer.audio_patch_id)
            seq.generator = make_generator(child_seed(params.seed, index) if params.n > 1 else params.seed,
                                           self.runner.device)
            seqs.append(seq)
            texts[seq.seq_id] = SequenceText(self.tokenizer, params, starts_in_reasoning=in_reasoning)
        # Registered only once every sequence is built, so a failure above leaves nothing behind.
        self.requests[request_id] = _Request(request_id, seqs, texts, sum(a.num_tokens for a in audio))
        for seq in seqs:
            self.scheduler.add(seq)

    def abort(self, request_id: str) -> None:
        """Drop a request now: its sequences leave the schedule and their KV blocks are freed."""
        request = self.requests.pop(request_id, None)
        if request is not None:
            for seq in request.seqs:
                self.scheduler.finish(seq, "abort")

    def has_unfinished_requests(self) -> bool:
        return bool(self.requests)

    # ---- stepping -------------------------------------------------------------------------------

    def step(self) -> list[RequestOutput]:
        """Run one scheduled forward pass and return the outputs of the requests it advanced."""
        work = self.scheduler.schedule()
        if work is None:
            return []
        if isinstance(work, PrefillStep):
            try:
                logits = self.runner.prefill(work)
            except Exception as e:  # one sequence's prefill: only its request fails
                return [self._failed(work.seq.request_id, e)]
            work.seq.num_computed = work.end
            if not work.completes:
                return []
            self.blocks.register_full_blocks(work.seq.block_table, work.seq.cache_keys())
            seqs, logits = [work.seq], logits[None]
        else:
            logits = self.runner.decode(work)
            for seq in work.seqs:
                seq.num_computed = seq.num_tokens
            seqs = work.seqs
        sampled = self.sampler(logits, [self._row(s) for s in seqs])
        return self._process(seqs, sampled)

    def _row(self, seq: Sequence) -> SamplingRow:
        return SamplingRow(params=seq.params, prompt_ids=seq.prompt_ids, output_ids=seq.output_ids,
                           generator=seq.generator)

    def _process(self, seqs: list[Sequence], sampled: SamplerOutput) -> list[RequestOutput]:
        touched: dict[str, list[CompletionDelta]] = {}
        failed: list[RequestOutput] = []
        for seq, token, logprobs in zip(seqs, sampled.token_ids, sampled.logprobs):
            if seq.request_id not in self.requests:  # failed on an earlier sequence of this batch
                continue
            try:
                delta = self._advance(seq, token, logprobs)
            except Exception as e:  # detokenizing, stop strings: a fault of this request, not of the batch
                touched.pop(seq.request_id, None)
                failed.append(self._failed(seq.request_id, e))
                continue
            touched.setdefault(seq.request_id, []).append(delta)
        return [self._request_output(rid, deltas) for rid, deltas in touched.items()] + failed

    def _failed(self, request_id: str, error: Exception) -> RequestOutput:
        """Drop a request that failed alone (freeing its blocks) and say so in its output."""
        request = self.requests[request_id]
        self.abort(request_id)
        first = request.seqs[0]
        return RequestOutput(request_id=request_id, deltas=[], prompt_tokens=len(first.prompt_ids),
                             audio_tokens=request.audio_tokens, cached_tokens=first.num_cached_prompt_tokens,
                             finished=True, error=error)

    def _advance(self, seq: Sequence, token: int, logprobs) -> CompletionDelta:
        """Append a sampled token, apply the thinking budget and stop rules, and detokenize."""
        text_state = self.requests[seq.request_id].texts[seq.seq_id]
        params = seq.params
        seq.output_ids.append(token)
        new_ids = [token]
        if text_state.in_reasoning:
            seq.num_reasoning_tokens += 1
        finish, stop_reason = self._finish_reason(seq, token)
        visible = [] if finish == "stop" and stop_reason == token else new_ids
        if finish is None and text_state.in_reasoning and params.max_thinking_tokens is not None \
                and seq.num_reasoning_tokens >= params.max_thinking_tokens:
            seq.output_ids.extend(self._think_close_ids)  # forced: the next step prefills them
            visible = new_ids = new_ids + self._think_close_ids
        text, reasoning, content = text_state.add(visible)
        if finish is None and text_state.stop_reason is not None:
            finish, stop_reason = "stop", text_state.stop_reason
        if finish is not None:
            tail = text_state.finish()
            text, reasoning, content = text + tail[0], reasoning + tail[1], content + tail[2]
            self.scheduler.finish(seq, finish)
        return CompletionDelta(index=seq.index, token_ids=new_ids, text=text, reasoning=reasoning, content=content,
                               logprobs=[logprobs] if logprobs is not None else [], finish_reason=finish,
                               stop_reason=stop_reason, completion_tokens=len(seq.output_ids),
                               reasoning_tokens=seq.num_reasoning_tokens)

    def _finish_reason(self, seq: Sequence, token: int) -> tuple[str | None, str | int | None]:
        params = seq.params
        if token in params.stop_token_ids or (not params.ignore_eos and token in self.tokenizer.eos_token_ids):
            return "stop", token
        if params.max_tokens is not None and len(seq.output_ids) >= params.max_tokens:
            return "length", None
        if seq.num_tokens >= self.max_model_len:
            return "length", None
        return None, None

    def _request_output(self, request_id: str, deltas: list[CompletionDelta]) -> RequestOutput:
        request = self.requests[request_id]
        finished = all(s.finish_reason is not None for s in request.seqs)
        if finished:
            del self.requests[request_id]
        first = request.seqs[0]
        return RequestOutput(request_id=request_id, deltas=deltas, prompt_tokens=len(first.prompt_ids),
                             audio_tokens=request.audio_tokens, cached_tokens=first.num_cached_prompt_tokens,
                             finished=finished)

    # ---- request checks -------------------------------------------------------------------------

    def apply_thinking_mode(self, prompt_ids: list[int], thinking: str) -> list[int]:
        """The prompt the engine runs: with thinking="off" the think block is closed, in the upstream non-CoT
        form <think>\n\n</think>\n. Idempotent, so a server can apply it first to check the final length."""
        prompt_ids = list(prompt_ids)
        if thinking == "on" or prompt_ids[-len(self._think_close_ids):] == self._think_close_ids:
            return prompt_ids
        if self._prompt_leaves_think_open(prompt_ids):
            return prompt_ids + self._think_close_ids
        return prompt_ids + self._think_open_ids + self._think_close_ids

    def _prompt_leaves_think_open(self, prompt_ids: list[int]) -> bool:
        """Whether generation starts inside a think block: the R1 generation prompt ends in "<think>\n", but an
        assistant prefill may already have closed it (then the output is all answer)."""
        text = self.tokenizer.decode(prompt_ids)
        return text.rfind(THINK_START) > text.rfind(THINK_END)

    def _audio_chunk(self, mel: torch.Tensor) -> AudioChunk:
        digest = hashlib.sha256(mel.detach().cpu().float().numpy().tobytes()).hexdigest()
        n = num_audio_tokens(mel.shape[-1], formula=self.config.audio_token_formula)
        return AudioChunk(mel=mel, content_hash=f"{mel.shape[0]}:{digest}", num_tokens=n)

    def _check_request(self, prompt_ids: list[int], audio: list[AudioChunk], params: SamplingParams) -> None:
        if not prompt_ids:
            raise RequestError("the prompt is empty")
        patches = sum(1 for t in prompt_ids if t == self.tokenizer.audio_patch_id)
        if patches != sum(a.num_tokens for a in audio):
            raise RequestError(f"prompt has {patches} <audio_patch> tokens but the audio chunks need "
                               f"{sum(a.num_tokens for a in audio)}")
        if len(prompt_ids) >= self.max_model_len:
            raise RequestError(f"prompt is {len(prompt_ids)} tokens; the maximum model length is "
                               f"{self.max_model_len} (prompt plus at least one generated token)")
        longest = min(self.max_model_len, len(prompt_ids) + (params.max_tokens or self.max_model_len))
        if self.blocks.blocks_needed(longest) > self.blocks.num_blocks:
            raise RequestError(f"request may need {longest} tokens of KV cache; the engine holds "
                               f"{self.kv_capacity_tokens}")
