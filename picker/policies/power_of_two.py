"""Power of two choices: sample two workers, keep the less loaded one.

Nearly as balanced as least-load but without every picker replica herding onto the same idle
worker (Mitzenmacher, "The Power of Two Choices in Randomized Load Balancing").
"""

from __future__ import annotations

import random as _random
from collections.abc import Sequence

from picker.fleet.registry import Worker
from picker.policies.base import PolicyDescriptor, SeededParams
from picker.policies.least_load import load_key
from picker.routing.request import RoutingRequest


class PowerOfTwo:
    name = "power_of_two"

    def __init__(self, params: SeededParams) -> None:
        self._rng = _random.Random(params.seed)

    def pick(self, request: RoutingRequest, candidates: Sequence[Worker]) -> Worker:
        if len(candidates) == 1:
            return candidates[0]
        first, second = self._rng.sample(candidates, 2)
        return first if load_key(first) <= load_key(second) else second


DESCRIPTOR = PolicyDescriptor(PowerOfTwo.name, SeededParams, PowerOfTwo)
