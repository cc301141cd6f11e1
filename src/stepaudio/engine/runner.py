"""Model runner: turns scheduled steps into forward passes over the paged cache; owns the encoder cache."""

from __future__ import annotations

from collections import OrderedDict

import torch

from ..model.step_audio import StepAudioForCausalLM
from .kv_cache import KVPool, PagedAttention
from .scheduler import DecodeStep, PrefillStep
from .sequence import AudioChunk, Sequence


class EncoderCache:
    """Bounded LRU of adaptor outputs keyed by the chunk's content hash (resent audio is not re-encoded)."""

    def __init__(self, model: StepAudioForCausalLM, capacity: int, formula: str):
        self.model = model
        self.capacity = capacity
        self.formula = formula
        self.entries: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.num_encoded = 0

    def get(self, chunk: AudioChunk) -> torch.Tensor:
        hit = self.entries.get(chunk.content_hash)
        if hit is not None:
            self.entries.move_to_end(chunk.content_hash)
            return hit
        (embeds,) = self.model.encode_audio([chunk.mel], formula=self.formula)
        self.num_encoded += 1
        if self.capacity > 0:
            self.entries[chunk.content_hash] = embeds
            while len(self.entries) > self.capacity:
                self.entries.popitem(last=False)
        return embeds


class ModelRunner:
    def __init__(self, model: StepAudioForCausalLM, pool: KVPool, encoder_cache: EncoderCache,
                 compile_decode: bool = False):
        self.model = model
        self.pool = pool
        self.encoder_cache = encoder_cache
        self.device = model.device
        # The decode step is the same small graph every step. torch.compile with freezing treats the weights
        # as constants (packing them for oneDNN on CPU) and fuses the elementwise work between the matrix
        # products. Prefill runs eagerly: it is large enough that per-op overhead does not matter.
        self._compiled_logits = None
        if compile_decode:
            self._compiled_logits = torch.compile(self._logits_of_last, dynamic=True)
            self._compile_decode_graphs()

    @torch.inference_mode()
    def prefill(self, step: PrefillStep) -> torch.Tensor:
        """Run tokens start..end-1 of one sequence; returns the logits of its last position [V]."""
        seq, start, end = step.seq, step.start, step.end
        ids = torch.tensor([seq.token_ids[start:end]], device=self.device)
        positions = torch.arange(start, end, device=self.device)[None]
        audio, rows = self._audio_for(seq, start, end)
        context = PagedAttention(self.pool, [seq.block_table], [end], end - start)
        hidden = self.model(ids, positions, audio, rows, kv_cache=context)
        return self.model.compute_logits(hidden[0, -1])

    @torch.inference_mode()
    def decode(self, step: DecodeStep) -> torch.Tensor:
        """One new token for every sequence in the batch; returns logits [B, V]."""
        seqs = step.seqs
        ids = torch.tensor([[s.token_ids[-1]] for s in seqs], device=self.device)
        positions = torch.tensor([[s.num_tokens - 1] for s in seqs], device=self.device)
        context = PagedAttention(self.pool, [s.block_table for s in seqs], [s.num_tokens for s in seqs], 1)
        if self._compiled_logits is None:
            return self._logits_of_last(ids, positions, context)
        return self._run_compiled(ids, positions, context)

    @torch.inference_mode()
    def _compile_decode_graphs(self) -> None:
        """Compile both decode graphs now, not in the middle of serving: batch 1 (no mask) and one for every
        larger batch, both for any context length (batch and length dimensions marked dynamic, else
        torch.compile would first specialise on the sizes it sees). The dummy rows write into block 0,
        which is free at start-up and is rewritten before any read once it is allocated."""
        for batch in (1, 2):
            ids = torch.zeros(batch, 1, dtype=torch.long, device=self.device)
            positions = torch.ones(batch, 1, dtype=torch.long, device=self.device)
            context = PagedAttention(self.pool, [[0]] * batch, [2] * batch, 1)
            dynamic = [(context.read_slots, 1)]
            if batch > 1:
                dynamic += [(ids, 0), (positions, 0), (context.write_slots, 0), (context.read_slots, 0),
                            (context.mask, 0), (context.mask, 3)]
            for tensor, dim in dynamic:
                torch._dynamo.mark_dynamic(tensor, dim)
            self._run_compiled(ids, positions, context)

    def _run_compiled(self, ids: torch.Tensor, positions: torch.Tensor, context: PagedAttention) -> torch.Tensor:
        # Graphs compile at their first call, under this setting; passing it in torch.compile's options does
        # not reach the freezing pass (measured: no speed-up that way).
        with torch._inductor.config.patch(freezing=True):
            return self._compiled_logits(ids, positions, context)

    def _logits_of_last(self, ids: torch.Tensor, positions: torch.Tensor, context: PagedAttention) -> torch.Tensor:
        return self.model.compute_logits(self.model(ids, positions, kv_cache=context)[:, -1])

    def _audio_for(self, seq: Sequence, start: int, end: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Adaptor rows for the prompt's audio positions inside [start, end), and the mask marking them."""
        prompt = seq.prompt_ids[:end]
        rows = [i for i in range(start, len(prompt)) if prompt[i] == seq.audio_patch_id]
        if not rows:
            return None, None
        before = sum(1 for t in seq.prompt_ids[:start] if t == seq.audio_patch_id)
        embeds = torch.cat([self.encoder_cache.get(c) for c in seq.audio])[before:before + len(rows)]
        mask = torch.zeros(1, end - start, dtype=torch.bool, device=self.device)
        mask[0, [r - start for r in rows]] = True
        return embeds, mask
