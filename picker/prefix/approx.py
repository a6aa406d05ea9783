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
from picker.prefix.native import evict_oldest, record

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
            lru = self._lru.setdefault(worker_id, OrderedDict())
            record(lru, self._holders.masks, hashes, self._capacity_of.get(worker_id,
                                                                          self._capacity),
                   self._holders.bit(worker_id))

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
                evict_oldest(lru, self._holders.masks, len(lru) - capacity,
                             self._holders.bit(worker_id))

    def blocks_of(self, worker_id: str) -> int:
        return len(self._lru.get(worker_id, ()))

    def capacity_of(self, worker_id: str) -> int:
        """The most blocks the worker's LRU holds (its engine's cache, once calibrated)."""
        return self._capacity_of.get(worker_id, self._capacity)
