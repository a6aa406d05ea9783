"""The one interface every routing policy implements."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from picker.registry import Worker
from picker.request import RoutingRequest

__all__ = ["Policy"]


class Policy(Protocol):
    """Chooses one worker among candidates.

    Synchronous and free of I/O: the router has already filtered `candidates` to routable workers
    serving the request's model, and guarantees the sequence is non-empty. Policy-private state
    (cursors, trees) lives on the instance; live worker state (in-flight) on the Worker.
    """

    name: str
    # True when the policy reads `request.prefix` (then the prefix index must be enabled).
    needs_prefix: bool

    def pick(self, request: RoutingRequest, candidates: Sequence[Worker]) -> Worker: ...
