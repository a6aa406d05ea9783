"""Round robin per model: each model's candidates take turns, whatever the other models do."""

from __future__ import annotations

from collections.abc import Sequence

from picker.fleet.registry import Worker
from picker.policies.base import PolicyDescriptor, PolicyParams
from picker.routing.request import RoutingRequest


class RoundRobin:
    name = "round_robin"

    def __init__(self, params: PolicyParams) -> None:
        self._cursor: dict[str, int] = {}

    def pick(self, request: RoutingRequest, candidates: Sequence[Worker]) -> Worker:
        turn = self._cursor.get(request.model, 0)
        self._cursor[request.model] = turn + 1
        return candidates[turn % len(candidates)]


DESCRIPTOR = PolicyDescriptor(RoundRobin.name, PolicyParams, RoundRobin)
