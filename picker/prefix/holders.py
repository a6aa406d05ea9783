"""Which workers hold each block: the reverse map both prefix indexes match against.

Block hash -> bitmask of holding workers makes a match one dict lookup and one AND per prompt
block, and costs an int per cached block instead of a set (bytes per entry are measured in
docs/benchmarks.md). The indexes differ only in how they learn what a worker holds.
"""

from __future__ import annotations

from collections.abc import Iterable

from picker.prefix.native import drops

__all__ = ["Holders"]


class Holders:
    def __init__(self) -> None:
        self.masks: dict[int, int] = {}  # block hash -> bitmask of worker bits
        self._bit: dict[str, int] = {}  # worker id -> its bit
        self._ids: dict[int, str] = {}  # bit -> worker id

    def bit(self, worker_id: str) -> int:
        """The worker's bit, given on first use; the lowest free one, so removed ids give
        theirs back."""
        bit = self._bit.get(worker_id)
        if bit is None:
            bit = 1
            while bit in self._ids:
                bit <<= 1
            self._bit[worker_id], self._ids[bit] = bit, worker_id
        return bit

    def drop_worker(self, worker_id: str, blocks: Iterable[int]) -> None:
        """Forget the worker: `blocks` are all it was recorded as holding."""
        bit = self._bit.pop(worker_id, None)
        if bit is None:
            return
        for block in blocks:
            self.discard(block, bit)
        del self._ids[bit]

    def add(self, block: int, bit: int) -> None:
        masks = self.masks
        masks[block] = masks.get(block, 0) | bit

    def discard(self, block: int, bit: int) -> None:
        mask = self.masks.get(block, 0) & ~bit
        if mask:
            self.masks[block] = mask
        else:
            self.masks.pop(block, None)

    def mask_of(self, worker_ids: Iterable[str]) -> int:
        bits = self._bit
        mask = 0
        for worker_id in worker_ids:
            mask |= bits.get(worker_id, 0)
        return mask

    def leading(self, hashes: list[int], alive: int) -> dict[str, int]:
        """Per worker of `alive`, how many of `hashes` it holds from the first on."""
        matched: dict[str, int] = {}
        for mask, depth in drops(self.masks, hashes, alive):
            self._credit(mask, depth, matched)
        return matched

    def _credit(self, mask: int, depth: int, matched: dict[str, int]) -> None:
        while mask:
            low = mask & -mask
            matched[self._ids[low]] = depth
            mask ^= low
