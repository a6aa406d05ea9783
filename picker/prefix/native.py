"""The prefix index's per-block loops: compiled where the install could, in Python otherwise.

picker/prefix/_native.c is built by hatch_build.py at install time. Why both: a long prompt is
hashed and recorded block by block (1,760 blocks for 220 KB), and a replay spends a quarter of
its CPU in these loops; the compiled ones take a fraction of that (docs/benchmarks.md, "The
prefix index's loops in C"). An install without a C compiler (or an interpreter the C code does
not know) must still work, and give the same hashes: replicas exchange them (picker/replicas),
so a process with the module and one without must agree. Each pair is held to the same results
by tests/unit/test_prefix_native.py, and the compiled module is used only if it hashes a sample
as the Python code does (`_agrees`).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

__all__ = ["IMPLEMENTATION", "chain", "drops", "evict_oldest", "record"]


def py_chain(seed: int, units: str | tuple[int, ...] | list[int], block_size: int, first: int,
             last: int) -> list[int]:
    """Hashes of blocks `first`..`last - 1` of `units`, chained from `seed` (the hash of block
    `first - 1`): one slice, one tuple and one hash per block, nothing else allocated. A list's
    block is hashed as the tuple of its ids."""
    hashes: list[int] = []
    append = hashes.append
    current = seed
    if isinstance(units, list):
        for end in range((first + 1) * block_size, last * block_size + 1, block_size):
            current = hash((current, tuple(units[end - block_size:end])))
            append(current)
        return hashes
    for end in range((first + 1) * block_size, last * block_size + 1, block_size):
        current = hash((current, units[end - block_size:end]))
        append(current)
    return hashes


def py_drops(masks: dict[int, int], hashes: list[int], alive: int) -> list[tuple[int, int]]:
    """Where a walk down the prompt's blocks loses holders: (the workers of `alive` that stop
    holding there, how many leading blocks they hold), in order, then the workers that hold
    every block. Workers that hold not even the first block are left out (they hold 0)."""
    found: list[tuple[int, int]] = []
    get = masks.get
    depth = 0
    for block in hashes:
        still = get(block, 0) & alive
        if depth and still != alive:
            found.append((alive & ~still, depth))
        alive = still
        if not alive:
            break
        depth += 1
    if alive:
        found.append((alive, depth))
    return found


def py_record(lru: OrderedDict[int, None], masks: dict[int, int], hashes: list[int],
              capacity: int, bit: int) -> None:
    """A prompt's blocks are now held by the worker whose LRU is `lru` and whose bit is `bit`.

    Newest last, and leading blocks touched last: like the engines, evict a prompt's tail
    before its shared head. A prompt longer than the LRU would evict its own tail while
    recording it: only its leading `capacity` blocks can stay. The oldest blocks go once the
    prompt is in, not one per block stored: the same blocks, since the prompt's own are all
    newer than what is evicted (at most `capacity` of them) and the LRU held at most
    `capacity` before.
    """
    touch, get = lru.move_to_end, masks.get
    for block in reversed(hashes[:capacity]):
        if block in lru:
            touch(block)
        else:
            lru[block] = None
            masks[block] = get(block, 0) | bit
    if len(lru) > capacity:
        py_evict_oldest(lru, masks, len(lru) - capacity, bit)


def py_evict_oldest(lru: OrderedDict[int, None], masks: dict[int, int], count: int,
                    bit: int) -> None:
    """Forget the worker's `count` least recently used blocks: the worker's bit leaves each
    block's mask, and a block no worker holds leaves `masks`."""
    evict, get, free = lru.popitem, masks.get, ~bit
    for _ in range(max(count, 0)):
        old = evict(False)[0]
        mask = get(old, 0) & free
        if mask:
            masks[old] = mask
        else:
            masks.pop(old, None)


def _agrees(compiled_chain: Callable[[int, str | tuple[int, ...] | list[int], int, int, int],
                                     list[int]]) -> bool:
    """Whether the compiled chain hashes text and token ids (small, negative, huge) as Python
    does: a build for an interpreter whose hashing differs is not used."""
    ids = (0, 1, -1, -2, 7, 2**61 - 1, 2**61, -(2**63), 2**64 + 5, 151_643, 42, 3, 9, 8, 4, 2)
    samples: list[str | tuple[int, ...] | list[int]] = [
        "the quick brown fox jumps over the lazy dog, twice", ids, list(ids)]
    return all(compiled_chain(seed, units, 4, 0, len(units) // 4) ==
               py_chain(seed, units, 4, 0, len(units) // 4)
               for units in samples for seed in (0, -1, 2**63 - 1, hash("llm-picker")))


try:
    from picker.prefix._native import chain as _c_chain
    from picker.prefix._native import drops as _c_drops
    from picker.prefix._native import evict_oldest as _c_evict_oldest
    from picker.prefix._native import record as _c_record
    _COMPILED = _agrees(_c_chain)
except Exception:  # not built, or built from other code (an older module): the Python loops
    _COMPILED = False

chain = _c_chain if _COMPILED else py_chain
drops = _c_drops if _COMPILED else py_drops
record = _c_record if _COMPILED else py_record
evict_oldest = _c_evict_oldest if _COMPILED else py_evict_oldest
IMPLEMENTATION = "c" if _COMPILED else "python"
