"""Uniform random choice: the baseline every smarter policy is measured against."""

from __future__ import annotations

import random as _random
from collections.abc import Sequence

from picker.fleet.registry import Worker
from picker.policies.base import PolicyDescriptor, SeededParams
from picker.routing.request import RoutingRequest


class Random:
    name = "random"

    def __init__(self, params: SeededParams) -> None:
        self._rng = _random.Random(params.seed)

    def pick(self, request: RoutingRequest, candidates: Sequence[Worker]) -> Worker:
        return self._rng.choice(candidates)


DESCRIPTOR = PolicyDescriptor(Random.name, SeededParams, Random)
