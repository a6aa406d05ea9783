"""The interface every prefix index offers the router, whatever keeps it up to date."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from picker.prefix.blocks import block_hashes, namespace_hash

__all__ = ["PrefixIndex", "PrefixMatch", "PromptBlocks"]


@dataclass(slots=True, frozen=True)
class PrefixMatch:
    """How much of a request's prompt each worker is believed to hold, in leading blocks."""

    total_blocks: int
    matched: Mapping[str, int]  # worker id -> leading blocks present (absent = 0)
    # Blocks each candidate is believed to hold in all (its tree size, in SGLang's words).
    held: Mapping[str, int] = field(default_factory=dict)
    # Estimated engine tokens per block, to turn unmatched blocks into prefill work.
    tokens_per_block: float = 0.0
    # Blocks each candidate's cache is believed to hold at most (the approximate index's size
    # for it); absent when unknown.
    capacity: Mapping[str, int] = field(default_factory=dict)

    def blocks(self, worker_id: str) -> int:
        return self.matched.get(worker_id, 0)

    def rate(self, worker_id: str) -> float:
        """Fraction of the prompt's blocks cached on the worker, 0..1."""
        return self.matched.get(worker_id, 0) / self.total_blocks if self.total_blocks else 0.0

    def fits(self, worker_id: str, fill: float) -> bool:
        """Whether the whole prompt fits beside what the worker holds within `fill` (0..1) of
        its capacity; False when the capacity is unknown."""
        capacity = self.capacity.get(worker_id)
        return capacity is not None and \
            self.held.get(worker_id, 0) + self.total_blocks <= fill * capacity

    def uncached_tokens(self, worker_id: str) -> float:
        """Prompt tokens the worker would have to prefill (whole blocks only)."""
        return (self.total_blocks - self.matched.get(worker_id, 0)) * self.tokens_per_block


class PromptBlocks:
    """A request's prompt as indexes read it: characters or token ids, cut into chained blocks
    on demand.

    Indexes hash with their own block size (the KV-event index with each engine's), so the
    prompt is hashed lazily and each (seed, block size) once per request: the router's match
    and record, and engines sharing a geometry, reuse one computation. A chain may be hashed
    in parts (`leading`): a match that stops at the first block no candidate holds leaves the
    rest to the recording, which runs after the answer (picker/prefix/producer.py).
    """

    __slots__ = ("model", "units", "is_tokens", "predicted", "_hashes")

    def __init__(self, model: str, units: str | Sequence[int], is_tokens: bool) -> None:
        self.model = model
        # Token ids as they come when a tuple or a list (a 100k-token prompt is not copied; the
        # request owns them and no one changes them), other sequences as one tuple.
        self.units = units if isinstance(units, (str, tuple, list)) else tuple(units)
        self.is_tokens = is_tokens
        # The match computed for the decision, set by the producer: what the index predicted
        # for the pick, read again when the pick is recorded instead of matching twice.
        self.predicted: PrefixMatch | None = None
        self._hashes: dict[tuple[int | None, int], list[int]] = {}

    def blocks(self, block_size: int) -> int:
        """How many complete blocks the prompt has (its chain's length), without hashing."""
        return len(self.units) // block_size

    def hashes(self, block_size: int, seed: int | None = None) -> list[int]:
        """Chained hashes of the complete blocks; `seed` defaults to the model's namespace, in
        which character and token blocks never meet (a fallback to characters cannot claim a
        match against token blocks)."""
        return self.leading(block_size, len(self.units) // block_size, seed)

    def leading(self, block_size: int, count: int, seed: int | None = None) -> list[int]:
        """At least the first `count` hashes of the chain (all of it when shorter), hashing
        only the blocks not hashed yet. The list returned grows when more is asked for."""
        key = (seed, block_size)
        done = self._hashes.get(key)
        if done is None:
            done = self._hashes[key] = []
        if len(done) < count:
            if done:
                previous = done[-1]
            elif seed is None:
                previous = namespace_hash(self.model,
                                          salt="tokens" if self.is_tokens else "characters")
            else:
                previous = seed
            done += block_hashes(previous, self.units, block_size, len(done), count)
        return done


class PrefixIndex(Protocol):
    """Producer of prefix matches; policies only ever read the PrefixMatch it computes."""

    kind: str  # "approximate" or "kv_events", reported in metrics

    def match(self, prompt: PromptBlocks, worker_ids: Iterable[str]) -> PrefixMatch: ...

    def record(self, prompt: PromptBlocks, worker_id: str) -> None:
        """The request went to `worker_id`: assume it now caches these blocks."""
        ...

    def remove_worker(self, worker_id: str) -> None: ...

    def set_capacity(self, worker_id: str, blocks: int) -> None: ...

    def blocks_of(self, worker_id: str) -> int:
        """Blocks currently believed cached on the worker (exported as a metric)."""
        ...
