"""The simulated engine's prefix cache: whole blocks of tokens, LRU, pinned while in use.

Modelled on vLLM's automatic prefix caching: a request reuses the leading blocks already
cached, computes the rest (that is its prefill cost), and its blocks stay pinned until it
finishes; unpinned blocks are evicted least recently used first when space is needed.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = ["BlockCache", "Claim", "token_block_hashes"]


def token_block_hashes(tokens: Sequence[str], block_tokens: int) -> list[int]:
    """Chained hashes of complete token blocks (the engine's view of a prompt)."""
    hashes: list[int] = []
    current = 0
    for start in range(0, len(tokens) - block_tokens + 1, block_tokens):
        current = hash((current, tuple(tokens[start:start + block_tokens])))
        hashes.append(current)
    return hashes


@dataclass(slots=True)
class Claim:
    """What one request did to the cache: its hits, the blocks it pins, stores and evicted."""

    hit_blocks: int
    pinned: list[int] = field(default_factory=list)
    stored: list[int] = field(default_factory=list)
    evicted: list[int] = field(default_factory=list)


class BlockCache:
    def __init__(self, capacity_blocks: int) -> None:
        self.capacity = capacity_blocks
        self._blocks: OrderedDict[int, int] = OrderedDict()  # hash -> pin count

    def __len__(self) -> int:
        return len(self._blocks)

    def cached_prefix(self, hashes: Sequence[int]) -> int:
        """How many leading blocks are cached now."""
        count = 0
        for block in hashes:
            if block not in self._blocks:
                break
            count += 1
        return count

    def acquire(self, hashes: Sequence[int]) -> Claim:
        """Pin a request's blocks, inserting missing ones (evicting unpinned LRU blocks)."""
        claim = Claim(hit_blocks=self.cached_prefix(hashes))
        for block in hashes:
            if block in self._blocks:
                self._blocks[block] += 1
                self._blocks.move_to_end(block)
                claim.pinned.append(block)
                continue
            if len(self._blocks) >= self.capacity:
                self._evict_one(claim.evicted)
            if len(self._blocks) >= self.capacity:
                break  # everything cached is pinned: the tail is computed but not kept
            self._blocks[block] = 1
            claim.pinned.append(block)
            claim.stored.append(block)
        return claim

    def release(self, claim: Claim) -> None:
        for block in claim.pinned:
            pins = self._blocks.get(block)
            if pins:
                self._blocks[block] = pins - 1

    def clear(self) -> list[int]:
        """Drop every unpinned block (POST /reset_prefix_cache); returns what was dropped."""
        dropped = [block for block, pins in self._blocks.items() if pins == 0]
        for block in dropped:
            del self._blocks[block]
        return dropped

    def usage(self) -> float:
        return len(self._blocks) / self.capacity

    def _evict_one(self, evicted: list[int]) -> bool:
        for block, pins in self._blocks.items():
            if pins == 0:
                del self._blocks[block]
                evicted.append(block)
                return True
        return False
