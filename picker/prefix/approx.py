"""Approximate prefix index: what each worker probably caches, learned from our own picks.

Per worker, a bounded LRU of block hashes stands in for the engine's cache. It drifts when
engines evict differently or other routers send traffic, which is what the KV-event index
(picker/prefix/kv_index.py) corrects.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable

from picker.prefix.holders import Holders
from picker.prefix.index import PrefixMatch, PromptBlocks

__all__ = ["ApproxPrefixIndex"]

# Blocks hashed before the first look at the index: 8k characters at the default block size.
_FIRST_HASHED = 64


class ApproxPrefixIndex:
    kind = "approximate"

    def __init__(self, capacity_blocks: int = 65536, block_size: int = 128) -> None:
        if capacity_blocks < 1:
            raise ValueError("capacity_blocks must be at least 1")
        if block_size < 1:
            raise ValueError("block_size must be at least 1")
        self.block_size = block_size
        self._capacity = capacity_blocks
        self._capacity_of: dict[str, int] = {}  # per-worker overrides (engine-sized)
        self._lru: dict[str, OrderedDict[int, None]] = {}
        self._holders = Holders()
        self._lock = threading.Lock()

    def match(self, prompt: PromptBlocks, worker_ids: Iterable[str]) -> PrefixMatch:
        """Hashes only as far as some candidate may hold the prompt: the chain grows 4x at a
        time while a candidate holds its last block, since the walk (`Holders.leading`) stops
        at the first block no candidate holds. A new prompt is hashed up to its first part."""
        holders = self._holders
        alive = holders.mask_of(worker_ids)
        total = prompt.blocks(self.block_size)
        want = _FIRST_HASHED
        hashes = prompt.leading(self.block_size, want)
        masks = holders.masks
        while len(hashes) < total and masks.get(hashes[-1], 0) & alive:
            want *= 4
            hashes = prompt.leading(self.block_size, want)
        return PrefixMatch(total, holders.leading(hashes, alive))

    def record(self, prompt: PromptBlocks, worker_id: str) -> None:
        self.record_hashes(prompt.hashes(self.block_size), worker_id)

    def record_hashes(self, hashes: list[int], worker_id: str) -> None:
        """`record` of a prompt already hashed at this index's block size (a peer replica's
        pick arrives so)."""
        with self._lock:
            bit = self._holders.bit(worker_id)
            lru = self._lru.setdefault(worker_id, OrderedDict())
            capacity = self._capacity_of.get(worker_id, self._capacity)
            # Newest last, and leading blocks touched last: like the engines, evict a prompt's
            # tail before its shared head. A prompt longer than the LRU would evict its own
            # tail while recording it: only its leading `capacity` blocks can stay.
            # Holders.add/discard are inlined: this loop runs once per prompt block, and a
            # long prompt that keeps missing (an engine cache smaller than its working set)
            # spent half its time in the calls.
            masks = self._holders.masks
            touch, get = lru.move_to_end, masks.get
            for block in reversed(hashes[:capacity]):
                if block in lru:
                    touch(block)
                else:
                    lru[block] = None
                    masks[block] = get(block, 0) | bit
            # The oldest blocks go once the prompt is in, not one per block stored: the same
            # blocks, since the prompt's own are all newer than what is evicted (at most
            # `capacity` of them) and the LRU held at most `capacity` before.
            if len(lru) > capacity:
                self._evict_oldest(lru, len(lru) - capacity, bit)

    def remove_worker(self, worker_id: str) -> None:
        with self._lock:
            self._holders.drop_worker(worker_id, self._lru.pop(worker_id, ()))
            self._capacity_of.pop(worker_id, None)

    def set_capacity(self, worker_id: str, blocks: int) -> None:
        """Size one worker's LRU like its engine's cache, trimming it at once if smaller."""
        with self._lock:
            capacity = self._capacity_of[worker_id] = max(1, blocks)
            lru = self._lru.get(worker_id)
            if lru is not None and len(lru) > capacity:
                self._evict_oldest(lru, len(lru) - capacity, self._holders.bit(worker_id))

    def _evict_oldest(self, lru: OrderedDict[int, None], count: int, bit: int) -> None:
        """Forget the worker's `count` least recently used blocks (under the lock). Calibrated
        capacities move a few percent at most scrapes, so this loop runs for every block a
        shrinking capacity trims: Holders.discard is inlined, the worker's bit taken once."""
        masks = self._holders.masks
        evict, get, free = lru.popitem, masks.get, ~bit
        for _ in range(count):
            old = evict(False)[0]
            mask = get(old, 0) & free
            if mask:
                masks[old] = mask
            else:
                masks.pop(old, None)

    def blocks_of(self, worker_id: str) -> int:
        return len(self._lru.get(worker_id, ()))

    def capacity_of(self, worker_id: str) -> int:
        """The most blocks the worker's LRU holds (its engine's cache, once calibrated)."""
        return self._capacity_of.get(worker_id, self._capacity)
