"""Weighted scorer profile: sum of weight x score over configured scorers, best total wins.

The framework, not the scorers, clamps scores to [0, 1], applies weights, treats unknown scores
as neutral (0.5) and breaks ties at random (the Gateway API Inference Extension's split of
scorers and picker). Example: `{scorers: {prefix: 3, queue: 2, in_flight: 1}}`.
"""

from __future__ import annotations

import math
import random as _random
import time
from collections.abc import Mapping, Sequence

from picker.policies.scorers import SCORERS
from picker.registry import Worker
from picker.request import RoutingRequest

_NEUTRAL = 0.5


class Weighted:
    name = "weighted"

    def __init__(self, scorers: Mapping[str, float] | None = None,
                 stale_after_secs: float = 5.0, seed: int | None = None) -> None:
        chosen = dict(scorers) if scorers is not None else {"queue": 1.0, "in_flight": 1.0}
        unknown = sorted(set(chosen) - set(SCORERS))
        if unknown:
            raise ValueError(f"unknown scorers {unknown} (known: {', '.join(sorted(SCORERS))})")
        for scorer_name, weight in chosen.items():
            if isinstance(weight, bool) or not isinstance(weight, (int, float)):
                raise TypeError(f"weight of scorer {scorer_name!r} must be a number")
            if not 0 <= weight < math.inf:
                raise ValueError(f"weight of scorer {scorer_name!r} must be >= 0, got {weight}")
        if not any(chosen.values()):
            raise ValueError("at least one scorer weight must be positive")
        if not stale_after_secs > 0:
            raise ValueError("stale_after_secs must be > 0")
        self._weights = {name: weight for name, weight in chosen.items() if weight}
        self._stale = stale_after_secs
        self._rng = _random.Random(seed)
        self.needs_prefix = "prefix" in self._weights

    def pick(self, request: RoutingRequest, candidates: Sequence[Worker]) -> Worker:
        now = time.monotonic()
        totals = [0.0] * len(candidates)
        for scorer_name, weight in self._weights.items():
            scores = SCORERS[scorer_name](request, candidates, now, self._stale)
            for i, score in enumerate(scores):
                value = _NEUTRAL if score is None else min(1.0, max(0.0, score))
                totals[i] += weight * value
        best = max(totals)
        tied = [w for w, total in zip(candidates, totals, strict=True) if total >= best - 1e-12]
        return tied[0] if len(tied) == 1 else self._rng.choice(tied)
