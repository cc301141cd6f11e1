"""One-shot generation for a single prompt with a dense KV cache (the engine does batching later)."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from .engine.sampling import Sampler, SamplingParams, SamplingRow
from .model.kv_cache import DenseKVCache
from .model.step_audio import StepAudioForCausalLM


@torch.inference_mode()
def generate_tokens(model: StepAudioForCausalLM, prompt_ids: list[int], *,
                    audio_embeds: list[torch.Tensor] | None = None, audio_patch_id: int | None = None,
                    max_new_tokens: int = 256, stop_token_ids: set[int] | frozenset[int] = frozenset(),
                    temperature: float = 0.0, seed: int | None = None) -> Iterator[int]:
    """Yield new token ids: one prefill over the prompt, then one cached decode step per token.

    Stops after a stop token (which is yielded) or after max_new_tokens.
    """
    if not prompt_ids:
        raise ValueError("the prompt is empty: nothing to generate from")
    cfg = model.config.text
    device = model.device
    total = len(prompt_ids) + max_new_tokens
    if total > cfg.max_position_embeddings:
        raise ValueError(f"prompt ({len(prompt_ids)} tokens) + max_new_tokens ({max_new_tokens}) exceeds the "
                         f"model's {cfg.max_position_embeddings} positions")
    cache = DenseKVCache(cfg.num_hidden_layers, 1, total, cfg.num_key_value_heads, cfg.head_dim,
                         model.dtype, device)
    # The engine's sampler, so one-shot and served generation draw tokens the same way.
    sampler = Sampler(eos_token_ids=[])
    row = SamplingRow.for_request(SamplingParams(temperature=temperature, seed=seed), prompt_ids, device=device)
    ids = torch.tensor([prompt_ids], device=device)
    positions = torch.arange(len(prompt_ids), device=device)[None]
    audio = torch.cat(audio_embeds) if audio_embeds else None
    rows = ids == audio_patch_id if audio is not None else None
    hidden = model(ids, positions, audio, rows, kv_cache=cache)
    for step in range(max_new_tokens):
        token = sampler(model.compute_logits(hidden[0, -1:]), [row]).token_ids[0]
        row.output_ids.append(token)
        yield token
        if token in stop_token_ids:
            return
        pos = len(prompt_ids) + step
        hidden = model(torch.tensor([[token]], device=device), torch.tensor([[pos]], device=device), kv_cache=cache)
