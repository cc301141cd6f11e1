"""A sequence: one stream of tokens being generated, with its KV blocks and its place in the schedule."""

from __future__ import annotations

import enum
from collections.abc import Hashable
from dataclasses import dataclass, field

import torch

from .sampling import SamplingParams


class Status(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass
class AudioChunk:
    """A mel chunk, its content hash (the encoder-cache and prefix-cache key) and its token count."""

    mel: torch.Tensor
    content_hash: str
    num_tokens: int


@dataclass
class Sequence:
    seq_id: int
    request_id: str
    index: int                      # which of the request's n outputs this is
    prompt_ids: list[int]
    audio: list[AudioChunk]
    params: SamplingParams
    audio_patch_id: int | None
    output_ids: list[int] = field(default_factory=list)
    block_table: list[int] = field(default_factory=list)
    num_computed: int = 0           # leading tokens whose keys and values are in the cache
    status: Status = Status.WAITING
    finish_reason: str | None = None
    num_reasoning_tokens: int = 0
    num_cached_prompt_tokens: int = 0   # prompt tokens the prefix cache served at first admission
    generator: torch.Generator | None = None   # per-request seed, so batch-mates never change a draw

    @property
    def token_ids(self) -> list[int]:
        return self.prompt_ids + self.output_ids

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    @property
    def num_new(self) -> int:
        """Tokens the next forward must process."""
        return self.num_tokens - self.num_computed

    def cache_keys(self) -> list[Hashable]:
        """Per-position prefix-cache keys: the token id, or (audio hash, row) for the prompt's audio rows."""
        keys: list[Hashable] = []
        chunks = iter(self.audio)
        chunk, row = None, 0
        for token in self.prompt_ids:
            if token == self.audio_patch_id:
                if chunk is None or row == chunk.num_tokens:
                    chunk, row = next(chunks), 0
                keys.append((chunk.content_hash, row))
                row += 1
            else:
                keys.append(token)
        return keys + self.output_ids
