"""The interface every prefix index offers the router, whatever keeps it up to date."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

__all__ = ["PrefixIndex", "PrefixMatch"]


@dataclass(slots=True, frozen=True)
class PrefixMatch:
    """How much of a request's prompt each worker is believed to hold, in leading blocks."""

    total_blocks: int
    matched: Mapping[str, int]  # worker id -> leading blocks present (absent = 0)

    def blocks(self, worker_id: str) -> int:
        return self.matched.get(worker_id, 0)

    def rate(self, worker_id: str) -> float:
        """Fraction of the prompt's blocks cached on the worker, 0..1."""
        return self.matched.get(worker_id, 0) / self.total_blocks if self.total_blocks else 0.0


class PrefixIndex(Protocol):
    """Producer of prefix matches; policies only ever read the PrefixMatch it computes."""

    kind: str  # "approximate" or "kv_events", reported in metrics

    def match(self, hashes: list[int], worker_ids: Iterable[str]) -> PrefixMatch: ...

    def record(self, hashes: list[int], worker_id: str) -> None:
        """The request went to `worker_id`: assume it now caches these blocks."""
        ...

    def remove_worker(self, worker_id: str) -> None: ...

    def set_capacity(self, worker_id: str, blocks: int) -> None: ...

    def blocks_of(self, worker_id: str) -> int:
        """Blocks currently believed cached on the worker (exported as a metric)."""
        ...
