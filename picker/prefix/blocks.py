"""Chained block hashes: the identity of a prompt prefix, block by block.

h0 = H(model, lora, salt); h_i = H(h_{i-1}, block_i). Equal hashes at position i mean equal
prompts up to the end of block i within the same model/adapter namespace, which is exactly what
an engine's prefix cache can reuse.

H is Python's built-in tuple hash (64-bit, SipHash for text, xxHash-style tuple mixing): measured
11 us for the 128 blocks of an 8k-character prompt against 66 us for hashlib.blake2b (see
docs/benchmarks.md). It is salted per process, which is harmless: indexes live in one process's
memory and are rebuilt, not persisted.
"""

from __future__ import annotations

from collections.abc import Sequence

from picker.prefix.native import chain

__all__ = ["block_hashes", "namespace_hash", "next_hash"]


def namespace_hash(model: str, lora: str | None = None, salt: str = "") -> int:
    """h0: two models (or adapters) never share a prefix hit.

    Only strings and ints are hashed, never None (its hash is its address before Python
    3.12): under one PYTHONHASHSEED every process then computes the same hashes, which
    replicas sharing picks rely on (picker/replicas)."""
    return hash(("llm-picker/prefix", model, "" if lora is None else f"lora:{lora}", salt))


def block_hashes(seed: int, units: str | Sequence[int], block_size: int, start: int = 0,
                 stop: int | None = None) -> list[int]:
    """Hashes of each *complete* block of `units` (characters or token ids), chained from `seed`.

    A trailing partial block is left out: engines cache whole blocks only. `start`/`stop`
    (block numbers) hash a part of the chain: `seed` is then the hash of block `start - 1`.
    This is the hot loop of long prompts (1,760 blocks for 220 KB): compiled where the install
    could (picker/prefix/native.py). Token ids are hashed from a tuple or a list as they come
    (a list's block as the tuple `next_hash` would build); other sequences become a tuple.
    """
    if not isinstance(units, (str, tuple, list)):
        units = tuple(units)
    last = len(units) // block_size if stop is None else min(stop, len(units) // block_size)
    return chain(seed, units, block_size, start, last)


def next_hash(previous: int, block: str | Sequence[int]) -> int:
    """The hash of `block` following a block (or seed) hashed `previous`."""
    return hash((previous, block if isinstance(block, str) else tuple(block)))
