"""Approximate prefix index: what each worker probably caches, learned from our own picks.

Per worker, a bounded LRU of block hashes stands in for the engine's cache. A reverse map
block hash -> bitmask of holding workers makes a match one dict lookup and one AND per prompt
block, and costs an int per cached block instead of a set (see docs/benchmarks.md for bytes
per entry, measured). It drifts when engines evict differently or other routers send traffic,
which is what the KV-event index corrects.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable

from picker.prefix.index import PrefixMatch

__all__ = ["ApproxPrefixIndex"]


class ApproxPrefixIndex:
    kind = "approximate"

    def __init__(self, capacity_blocks: int = 65536) -> None:
        if capacity_blocks < 1:
            raise ValueError("capacity_blocks must be at least 1")
        self._capacity = capacity_blocks
        self._capacity_of: dict[str, int] = {}  # per-worker overrides (engine-sized)
        self._lru: dict[str, OrderedDict[int, None]] = {}
        self._holders: dict[int, int] = {}  # block hash -> bitmask of worker bits
        self._bit: dict[str, int] = {}  # worker id -> its bit
        self._ids: dict[int, str] = {}  # bit -> worker id
        self._lock = threading.Lock()

    def match(self, hashes: list[int], worker_ids: Iterable[str]) -> PrefixMatch:
        bits = self._bit
        alive = 0
        for worker_id in worker_ids:
            alive |= bits.get(worker_id, 0)
        matched: dict[str, int] = {}
        holders = self._holders
        depth = 0
        for block in hashes:
            still = holders.get(block, 0) & alive
            if depth and still != alive:
                self._credit(alive & ~still, depth, matched)
            alive = still
            if not alive:
                break
            depth += 1
        if alive:
            self._credit(alive, depth, matched)
        return PrefixMatch(len(hashes), matched)

    def _credit(self, mask: int, depth: int, matched: dict[str, int]) -> None:
        while mask:
            low = mask & -mask
            matched[self._ids[low]] = depth
            mask ^= low

    def record(self, hashes: list[int], worker_id: str) -> None:
        with self._lock:
            bit = self._bit.get(worker_id)
            if bit is None:
                bit = self._new_bit(worker_id)
            lru = self._lru[worker_id]
            holders = self._holders
            capacity = self._capacity_of.get(worker_id, self._capacity)
            # Newest last, and leading blocks touched last: like the engines, evict a prompt's
            # tail before its shared head.
            for block in reversed(hashes):
                if block in lru:
                    lru.move_to_end(block)
                    continue
                lru[block] = None
                holders[block] = holders.get(block, 0) | bit
                if len(lru) > capacity:
                    self._forget(lru.popitem(last=False)[0], bit)

    def remove_worker(self, worker_id: str) -> None:
        with self._lock:
            bit = self._bit.pop(worker_id, None)
            if bit is None:
                return
            for block in self._lru.pop(worker_id):
                self._forget(block, bit)
            del self._ids[bit]
            self._capacity_of.pop(worker_id, None)

    def set_capacity(self, worker_id: str, blocks: int) -> None:
        """Size one worker's LRU like its engine's cache, trimming it at once if smaller."""
        with self._lock:
            self._capacity_of[worker_id] = max(1, blocks)
            lru, bit = self._lru.get(worker_id), self._bit.get(worker_id)
            while lru is not None and bit is not None and len(lru) > max(1, blocks):
                self._forget(lru.popitem(last=False)[0], bit)

    def blocks_of(self, worker_id: str) -> int:
        return len(self._lru.get(worker_id, ()))

    def _new_bit(self, worker_id: str) -> int:
        """Lowest free bit: ids removed earlier give their bit back."""
        bit = 1
        while bit in self._ids:
            bit <<= 1
        self._bit[worker_id], self._ids[bit] = bit, worker_id
        self._lru[worker_id] = OrderedDict()
        return bit

    def _forget(self, block: int, bit: int) -> None:
        mask = self._holders.get(block, 0) & ~bit
        if mask:
            self._holders[block] = mask
        else:
            self._holders.pop(block, None)
