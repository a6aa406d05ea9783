"""Uniform random choice: the baseline every smarter policy is measured against."""

from __future__ import annotations

import random as _random
from collections.abc import Sequence

from picker.registry import Worker
from picker.request import RoutingRequest


class Random:
    name = "random"
    needs_prefix = False

    def __init__(self, seed: int | None = None) -> None:
        self._rng = _random.Random(seed)

    def pick(self, request: RoutingRequest, candidates: Sequence[Worker]) -> Worker:
        return self._rng.choice(candidates)
