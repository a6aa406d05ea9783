"""Fewest in-flight requests; among equals prefer higher priority, then lower cost, then chance.

Breaking the final tie at random matters: with list order, the first worker wins every idle
moment and a lightly loaded fleet skews to it (LiteLLM least-busy issue #39322).
"""

from __future__ import annotations

import random as _random
from collections.abc import Sequence

from picker.fleet.registry import Worker
from picker.policies.base import PolicyDescriptor, SeededParams
from picker.routing.request import RoutingRequest


def load_key(worker: Worker) -> tuple[int, int, float]:
    """Ordering shared by the load-based policies: lower is better."""
    return (worker.in_flight, -worker.spec.priority, worker.spec.cost)


class LeastLoad:
    name = "least_load"

    def __init__(self, params: SeededParams) -> None:
        self._rng = _random.Random(params.seed)

    def pick(self, request: RoutingRequest, candidates: Sequence[Worker]) -> Worker:
        # Each load read once: another thread or process may change it between two reads,
        # and a second read could then match no minimum at all.
        keys = [load_key(w) for w in candidates]
        best = min(keys)
        tied = [w for w, key in zip(candidates, keys, strict=True) if key == best]
        return tied[0] if len(tied) == 1 else self._rng.choice(tied)


DESCRIPTOR = PolicyDescriptor(LeastLoad.name, SeededParams, LeastLoad)
