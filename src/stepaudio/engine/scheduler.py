"""Scheduler: decides what each engine step runs, under max_num_seqs, a token budget and the KV blocks.

Each step is either one prefill chunk (a sequence with more than one token to process: a new prompt,
a resumed preempted sequence, or engine-inserted tokens) or one batched decode step for every running
sequence with exactly one new token. Prefill and decode alternate when both are pending, so new
requests start fast and running ones keep streaming. When blocks run out, the most recently admitted
sequence is preempted: its blocks are freed and it is recomputed later from its tokens.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from .block_manager import BlockManager, NoFreeBlocks
from .sequence import Sequence, Status


@dataclass
class PrefillStep:
    seq: Sequence
    start: int
    end: int

    @property
    def completes(self) -> bool:
        """True when the chunk reaches the sequence's last token, so the step yields a sample."""
        return self.end == self.seq.num_tokens


@dataclass
class DecodeStep:
    seqs: list[Sequence]


class Scheduler:
    def __init__(self, blocks: BlockManager, max_num_seqs: int, max_num_batched_tokens: int):
        self.blocks = blocks
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0
        self._last_was_prefill = False

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> PrefillStep | DecodeStep | None:
        decodable = [s for s in self.running if s.num_new == 1]
        prefer_decode = self._last_was_prefill and decodable
        prefill = None if prefer_decode else self._next_prefill()
        if prefill is not None:
            self._last_was_prefill = True
            return prefill
        self._last_was_prefill = False
        decode = self._decode_step()
        if decode is None and prefer_decode:
            return self._next_prefill()
        return decode

    def finish(self, seq: Sequence, reason: str) -> None:
        """Remove a sequence (finished or aborted) and free its blocks at once."""
        seq.status, seq.finish_reason = Status.FINISHED, reason
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self.blocks.free_blocks(seq.block_table)

    def _chunk(self, seq: Sequence) -> PrefillStep:
        end = min(seq.num_tokens, seq.num_computed + self.max_num_batched_tokens)
        return PrefillStep(seq, seq.num_computed, end)

    def _next_prefill(self) -> PrefillStep | None:
        for seq in self.running:  # finish partial prefills and engine-inserted tokens first
            if seq.num_new > 1 and self._reserve_slot(seq):
                return self._chunk(seq)
        if not self.waiting or len(self.running) >= self.max_num_seqs:
            return None
        seq = self.waiting[0]
        try:
            seq.block_table, seq.num_computed = self.blocks.allocate(seq.cache_keys())
        except NoFreeBlocks:
            return None
        if not seq.output_ids:  # a resumed (preempted) sequence keeps the count of its first admission
            seq.num_cached_prompt_tokens = seq.num_computed
        self.waiting.popleft()
        seq.status = Status.RUNNING
        self.running.append(seq)
        return self._chunk(seq)

    def _decode_step(self) -> DecodeStep | None:
        batch = []
        for seq in list(self.running):
            if seq.status is not Status.RUNNING or seq.num_new != 1:
                continue
            while not self._reserve_slot(seq):
                victim = self.running[-1]
                self._preempt(victim)
                if victim is seq:
                    break
            if seq.status is Status.RUNNING:
                batch.append(seq)
        return DecodeStep(batch) if batch else None

    def _reserve_slot(self, seq: Sequence) -> bool:
        try:
            self.blocks.append_slot(seq.block_table, seq.num_tokens)
            return True
        except NoFreeBlocks:
            return False

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.blocks.free_blocks(seq.block_table)
        seq.num_computed = 0
        seq.status = Status.WAITING
        self.waiting.appendleft(seq)
        self.num_preemptions += 1
