"""The simulated engine's prefix cache: whole blocks of tokens, LRU, pinned while in use.

Modelled on vLLM's automatic prefix caching: a request reuses the leading blocks already
cached, computes the rest (that is its prefill cost), and its blocks stay pinned until it
finishes; unpinned blocks are evicted least recently used first when space is needed.

A replay (picker_bench.replay) sends hundreds of blocks per prompt through here (a 12k-token
prompt is 752 blocks of 16 tokens), so the cache touches each block as few times as it can,
and a prompt's new blocks in bulk:
- A block's pin is not a counter on the block: the block records the request that used it
  last (its owner, which pins it while running), and only a block that a request takes over
  while its owner still runs gets a count of its other holders (`_shared`). Releasing a
  request then touches only the blocks it handed over, not all its blocks.
- The blocks a prompt needs evicted are found in one pass from the least recently used end,
  and its new blocks inserted with one `dict.update` (a dict keeps insertion order: its
  first keys are the least recently used).
The result is the same as handling the prompt block by block, which is what the cache means;
that path remains for the rare prompt whose own later blocks are the ones to evict.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import compress, count, filterfalse, islice, repeat, takewhile
from operator import not_

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
    number: int = -1  # the cache's name for the request while it holds its blocks


class BlockCache:
    def __init__(self, capacity_blocks: int) -> None:
        self.capacity = capacity_blocks
        self._owners: dict[int, int] = {}  # block -> owner, least recently used first
        # claims not released -> the blocks later ones took over while they held them
        self._running: dict[int, list[int]] = {}
        self._shared: Counter[int] = Counter()  # block -> running holders besides its owner
        self._numbers = count()

    def __len__(self) -> int:
        return len(self._owners)

    def cached_prefix(self, hashes: Sequence[int]) -> int:
        """How many leading blocks are cached now."""
        return len(list(takewhile(self._owners.__contains__, hashes)))

    def acquire(self, hashes: Sequence[int]) -> Claim:
        """Pin a request's blocks, inserting missing ones (evicting unpinned LRU blocks).

        As if block by block in order: a cached block is pinned and becomes the most recent;
        a missing one is stored, after evicting the least recently used unpinned block when
        the cache is full; when every cached block is pinned, the rest of the prompt is
        computed but neither kept nor pinned."""
        hit = self.cached_prefix(hashes)
        claim = Claim(hit_blocks=hit, number=next(self._numbers))
        self._running[claim.number] = []
        for block in hashes[:hit]:
            self._use(block, claim)
        rest = hashes[hit:]
        if rest and not self._acquire_rest(rest, claim):
            self._acquire_each(rest, claim)
        return claim

    def release(self, claim: Claim) -> None:
        """Unpin a claim's blocks; once per claim."""
        shared = self._shared
        for block in self._running.pop(claim.number, ()):
            shared[block] -= 1
            if not shared[block]:
                del shared[block]

    def clear(self) -> list[int]:
        """Drop every unpinned block (POST /reset_prefix_cache); returns what was dropped,
        least recently used first."""
        dropped = [block for block, owner in self._owners.items()
                   if not self._pinned(block, owner)]
        self._evict(dropped)
        return dropped

    def usage(self) -> float:
        return len(self._owners) / self.capacity

    def _pinned(self, block: int, owner: int) -> bool:
        return owner in self._running or block in self._shared

    def _use(self, block: int, claim: Claim) -> None:
        """Pin a cached block for `claim` and make it the most recent."""
        owners = self._owners
        held = self._running.get(owners.pop(block))
        if held is not None:  # its owner still runs, and holds it besides `claim`
            self._shared[block] += 1
            held.append(block)
        owners[block] = claim.number  # to the end: a dict keeps insertion order
        claim.pinned.append(block)

    def _acquire_rest(self, rest: Sequence[int], claim: Claim) -> bool:
        """`rest` (starting with a missing block) at once; False, having changed nothing,
        when one of its own blocks would be evicted before its turn."""
        owners = self._owners
        stored = list(dict.fromkeys(filterfalse(owners.__contains__, rest)))
        free = self.capacity - len(owners)
        victims = self._victims(len(stored) - free) if len(stored) > free else []
        if victims and not set(rest).isdisjoint(victims):
            return False
        self._evict(victims)
        fits = free + len(victims)
        if fits < len(stored):  # every other cached block is pinned: stop where it is full
            rest = rest[:rest.index(stored[fits])]
            stored = stored[:fits]
        if len(stored) == len(rest):  # all new (the usual tail of a prompt)
            owners.update(zip(rest, repeat(claim.number)))
            claim.pinned.extend(rest)
        else:
            new = set(stored)
            for block in rest:
                if block in new:
                    new.discard(block)
                    owners[block] = claim.number
                    claim.pinned.append(block)
                else:
                    self._use(block, claim)
        claim.stored = stored
        claim.evicted = victims
        return True

    def _acquire_each(self, rest: Sequence[int], claim: Claim) -> None:
        """`rest` block by block, for the prompts `_acquire_rest` cannot take."""
        owners = self._owners
        for block in rest:
            if block in owners:
                self._use(block, claim)
                continue
            if len(owners) >= self.capacity:
                victims = self._victims(1)
                if not victims:
                    break
                self._evict(victims)
                claim.evicted.extend(victims)
            owners[block] = claim.number
            claim.pinned.append(block)
            claim.stored.append(block)

    def _victims(self, wanted: int) -> list[int]:
        """Up to `wanted` unpinned blocks, least recently used first (read in slices of
        what is still wanted: unpinned blocks are the rule at that end)."""
        owners, running, shared = self._owners, self._running, self._shared
        victims: list[int] = []
        start = 0
        while len(victims) < wanted:
            end = start + wanted - len(victims)
            blocks = list(islice(owners, start, end))
            if not blocks:
                break
            free = map(not_, map(running.__contains__, islice(owners.values(), start, end)))
            found = compress(blocks, free)
            victims += filterfalse(shared.__contains__, found) if shared else found
            start = end
        return victims

    def _evict(self, blocks: list[int]) -> None:
        deque(map(self._owners.__delitem__, blocks), maxlen=0)
