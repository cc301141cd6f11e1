"""Block manager: hands out fixed-size KV blocks, shares full blocks between prompts with the same prefix.

A full block is identified by a hash chained over every key before it, so two sequences share a block
only if everything up to and including it is identical. For audio rows the key is the chunk's content
hash and the row's offset, since every `<audio_patch>` has the same token id.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Sequence


class NoFreeBlocks(RuntimeError):
    """The cache is full; the scheduler preempts a sequence and tries again."""


def block_hashes(keys: Sequence[Hashable], block_size: int) -> list[int]:
    """Chained hashes of every full block of `keys`."""
    hashes, parent = [], 0
    for start in range(0, len(keys) - block_size + 1, block_size):
        parent = hash((parent, tuple(keys[start:start + block_size])))
        hashes.append(parent)
    return hashes


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.ref_counts = [0] * num_blocks
        # Free blocks, oldest first. A freed full block keeps its hash so a later prompt can revive it.
        self.free: OrderedDict[int, None] = OrderedDict((b, None) for b in range(num_blocks))
        self.hash_of_block: dict[int, int] = {}
        self.block_of_hash: dict[int, int] = {}
        self.prefix_hit_tokens = 0  # prompt tokens served from the prefix cache (a metric)

    @property
    def num_free_blocks(self) -> int:
        return len(self.free)

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def allocate(self, keys: Sequence[Hashable]) -> tuple[list[int], int]:
        """Blocks for a sequence whose first len(keys) tokens must be cached; returns (blocks, cached tokens).

        Leading full blocks found in the prefix cache are shared and count as already computed.
        """
        hashes = block_hashes(keys, self.block_size) if self.enable_prefix_caching else []
        shared: list[int] = []
        for h in hashes:
            block = self.block_of_hash.get(h)
            if block is None:
                break
            shared.append(block)
        # Never reuse the block holding the last prompt token: its logits must be computed.
        if shared and len(shared) * self.block_size >= len(keys):
            shared.pop()
        fresh_needed = self.blocks_needed(len(keys)) - len(shared)
        revived = sum(1 for b in shared if self.ref_counts[b] == 0)
        if fresh_needed + revived > self.num_free_blocks:
            raise NoFreeBlocks(f"need {fresh_needed + revived} blocks, {self.num_free_blocks} free")
        for block in shared:
            self._take(block)
        table = shared + [self._take_fresh() for _ in range(fresh_needed)]
        self.prefix_hit_tokens += len(shared) * self.block_size
        return table, len(shared) * self.block_size

    def register_full_blocks(self, table: list[int], keys: Sequence[Hashable]) -> None:
        """Publish the hashes of the sequence's computed full blocks for later prompts to share."""
        if not self.enable_prefix_caching:
            return
        for block, h in zip(table, block_hashes(keys, self.block_size)):
            if block in self.hash_of_block:
                continue
            if h in self.block_of_hash:  # same content computed twice concurrently: keep the first
                continue
            self.hash_of_block[block] = h
            self.block_of_hash[h] = block

    def append_slot(self, table: list[int], num_tokens: int) -> None:
        """Grow `table` so it can hold num_tokens tokens."""
        while len(table) < self.blocks_needed(num_tokens):
            if not self.free:
                raise NoFreeBlocks("no free block for the next token")
            table.append(self._take_fresh())

    def free_blocks(self, table: list[int]) -> None:
        for block in reversed(table):  # tail blocks join the free list first, so they are evicted first
            self.ref_counts[block] -= 1
            if self.ref_counts[block] == 0:
                self.free[block] = None
        table.clear()

    def _take(self, block: int) -> None:
        if self.ref_counts[block] == 0:
            del self.free[block]
        self.ref_counts[block] += 1

    def _take_fresh(self) -> int:
        block, _ = self.free.popitem(last=False)
        old = self.hash_of_block.pop(block, None)
        if old is not None:
            del self.block_of_hash[old]
        self.ref_counts[block] = 1
        return block
