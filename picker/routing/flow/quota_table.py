"""QuotaTable: what each flow spent in the last minute, summed over every process of a picker.

A flow's budget must be one budget however `serve --workers N` spreads its requests (Envoy
hashes connections over the processes with SO_REUSEPORT: one connection, one process). The
table follows SharedCounts (picker.processes.counts): one row per process, written only by its
process (under that process's lock), read by all, with no lock across processes; aligned
8-byte stores are single instructions, so a reader never sees a torn word. A single process
keeps the same table in private memory.

A row has SLOTS slots; a slot is a key word (a 64-bit hash of the flow and dimension; 0 when
never used) and WINDOW cells, one per second of the rolling minute, each packing the second it
counts (low 23 bits of the monotonic clock's second, which every process on the host shares)
with the amount spent in it (40 bits). What a flow spent is the sum, over every row, of its
slot's cells whose second is still in the window: a sliding minute in one-second steps. (A
cell left untouched for 2**23 s, 97 days, reads as current again: a flow idle that long may
see an old charge once more - too strict, never too lenient.)

A flow's slot in a row is found by probing PROBES slots from its hash; a process takes a slot
in its own row whose every cell has left the window. Two flows whose 64-bit hashes are equal
share a budget (about 2**-64 per pair). When a process finds neither the flow's slot nor a
free one among the probes (more flows spending within a minute than the table holds near that
hash), `spend` says so and the caller refuses: a flow is never admitted unaccounted.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from pathlib import Path

from picker.processes.table_file import create_table, map_table

__all__ = ["PROBES", "SLOTS", "WINDOW", "QuotaTable", "Spent"]

WINDOW = 60  # cells per slot: the rolling minute, one per second
SLOTS = 4096  # per process row: 4096 * 61 words = about 2 MiB, a sparse file
PROBES = 8  # slots a flow may occupy, from its hash onwards
_SLOT_WORDS = 1 + WINDOW
_AMOUNT_BITS = 40
_AMOUNT_MAX = (1 << _AMOUNT_BITS) - 1
_SECOND_MASK = (1 << 23) - 1


@dataclass(frozen=True, slots=True)
class Spent:
    """A flow's spending in the window: the total and the part of it in each second (oldest
    first), which says when enough of it leaves the window."""

    total: int
    by_second: tuple[tuple[int, int], ...]  # (second, amount)


class QuotaTable:
    def __init__(self, path: Path | None = None, rows: int = 1, row: int = 0,
                 slots: int = SLOTS) -> None:
        """The table at `path` (made by `create`) as process `row` of `rows`; private memory
        for a single process when `path` is None."""
        self._rows = rows
        self._row = row
        self._slots = slots
        self._words = map_table(path, rows * slots * _SLOT_WORDS).cast("q")
        self._lock = threading.Lock()  # this process's writers of its own row

    @staticmethod
    def create(path: Path, rows: int, slots: int = SLOTS) -> None:
        """The zeroed table file, made once by the supervisor before any process starts."""
        create_table(path, rows * slots * _SLOT_WORDS)

    def spent(self, key: str, now: float) -> Spent:
        """What `key` spent in the minute up to `now`, in every process."""
        second = int(now)
        wanted = _hash(key)
        per_second: dict[int, int] = {}
        for row in range(self._rows):
            base = self._find(row, wanted)
            if base is None:
                continue
            for word in self._words[base + 1:base + _SLOT_WORDS]:
                age = (second - (word >> _AMOUNT_BITS)) & _SECOND_MASK
                amount = word & _AMOUNT_MAX
                if amount and age < WINDOW:
                    stamp = second - age
                    per_second[stamp] = per_second.get(stamp, 0) + amount
        return Spent(sum(per_second.values()), tuple(sorted(per_second.items())))

    def spend(self, key: str, amount: int, now: float) -> bool:
        """Add `amount` to `key` in this second, in this process's row; False when the row
        has no slot for it among its probes."""
        second = int(now)
        wanted = _hash(key)
        with self._lock:
            base = self._find(self._row, wanted)
            if base is None:
                base = self._claim(wanted, second)
                if base is None:
                    return False
            cell = base + 1 + second % WINDOW
            word = self._words[cell]
            held = word & _AMOUNT_MAX if (word >> _AMOUNT_BITS) == second & _SECOND_MASK else 0
            self._words[cell] = _pack(second, min(held + amount, _AMOUNT_MAX))
            return True

    def refund(self, key: str, amount: int, now: float) -> None:
        """Take back up to `amount` of this process's spending on `key`, newest second first:
        a refund never leaves the window later than the charge it undoes would have, so the
        flow's total never drops below what it really spent."""
        second = int(now)
        with self._lock:
            base = self._find(self._row, _hash(key))
            if base is None:
                return
            for age in range(WINDOW):
                if amount <= 0:
                    return
                stamp = second - age
                cell = base + 1 + stamp % WINDOW
                word = self._words[cell]
                if (word >> _AMOUNT_BITS) != stamp & _SECOND_MASK:
                    continue
                held = word & _AMOUNT_MAX
                taken = min(held, amount)
                self._words[cell] = _pack(stamp, held - taken)
                amount -= taken

    def _find(self, row: int, wanted: int) -> int | None:
        """The word index of `wanted`'s slot in `row`, if it has one."""
        for probe in range(PROBES):
            base = self._base(row, wanted, probe)
            if self._words[base] == wanted:
                return base
        return None

    def _claim(self, wanted: int, second: int) -> int | None:
        """A slot of this process's row whose cells have all left the window, now `wanted`'s;
        its old cells are stale, so readers ignore them whichever key they read."""
        for probe in range(PROBES):
            base = self._base(self._row, wanted, probe)
            if all(((second - (word >> _AMOUNT_BITS)) & _SECOND_MASK) >= WINDOW
                   or not word & _AMOUNT_MAX
                   for word in self._words[base + 1:base + _SLOT_WORDS]):
                self._words[base] = wanted
                return base
        return None

    def _base(self, row: int, wanted: int, probe: int) -> int:
        slot = (wanted + probe) % self._slots
        return (row * self._slots + slot) * _SLOT_WORDS


def _hash(key: str) -> int:
    """A stable, non-zero signed 64-bit hash (every process agrees; 0 marks a slot unused)."""
    value = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little",
                           signed=True)
    return value or 1


def _pack(second: int, amount: int) -> int:
    return ((second & _SECOND_MASK) << _AMOUNT_BITS) | amount
