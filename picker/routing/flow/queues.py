"""The waiting room: per priority band, per flow, a queue of requests in dispatch order.

Inside a flow the order is FCFS (arrival) or earliest deadline first - the deadline being
arrival + the client's x-slo-ttft-ms when sent, else arrival + the TTL - as llm-d-router's
ordering policies define them (pkg/epp/framework/plugins/flowcontrol/ordering/edf/edf.go:76-110,
slodeadline/slo_deadline.go:82-125). Plain data, no lock: the controller holds its own.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from dataclasses import dataclass, field

from picker.routing.flow.fairness import Fairness
from picker.routing.flow.key import FlowAsk
from picker.routing.flow.settings import OrderingKind
from picker.routing.flow.ticket import Ticket

__all__ = ["Band", "Waiter"]

_SEQUENCE = itertools.count()


@dataclass(eq=False, slots=True)
class Waiter:
    """One request waiting to be dispatched; `future` is resolved on its own loop."""

    ask: FlowAsk
    arrived: float
    deadline: float  # what EDF orders by
    expires: float  # when it is refused if still waiting
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Ticket]
    sequence: int = field(default_factory=lambda: next(_SEQUENCE))
    queued: bool = True

    def sort_key(self, ordering: OrderingKind) -> tuple[float, int]:
        first = self.deadline if ordering is OrderingKind.EDF else self.arrived
        return first, self.sequence


class Band:
    """The flows of one priority, each with a heap of waiters (removed ones skipped lazily)."""

    def __init__(self, priority: int, ordering: OrderingKind, fairness: Fairness) -> None:
        self.priority = priority
        self.fairness = fairness
        self._ordering = ordering
        self._flows: dict[str, list[tuple[tuple[float, int], Waiter]]] = {}
        self._counts: dict[str, int] = {}
        self.size = 0

    def push(self, waiter: Waiter) -> None:
        flow = waiter.ask.key.fairness_id
        if not self._counts.get(flow):
            self.fairness.joined(flow, self.backlogged())
        heapq.heappush(self._flows.setdefault(flow, []),
                       (waiter.sort_key(self._ordering), waiter))
        self._counts[flow] = self._counts.get(flow, 0) + 1
        self.size += 1

    def backlogged(self) -> list[str]:
        return [flow for flow, count in self._counts.items() if count]

    def head(self, flow: str) -> Waiter | None:
        heap = self._flows.get(flow)
        while heap and not heap[0][1].queued:
            heapq.heappop(heap)
        return heap[0][1] if heap else None

    def remove(self, waiter: Waiter) -> None:
        """Take `waiter` out (dispatched, expired, shed or gone); the heap forgets it lazily."""
        if not waiter.queued:
            return
        waiter.queued = False
        flow = waiter.ask.key.fairness_id
        self._counts[flow] -= 1
        self.size -= 1
        if not self._counts[flow]:
            del self._counts[flow]
            del self._flows[flow]

    def newest(self) -> Waiter | None:
        """The waiter that has waited least: the first to shed from this band."""
        found: Waiter | None = None
        for heap in self._flows.values():
            for _, waiter in heap:
                if waiter.queued and (found is None or waiter.arrived > found.arrived):
                    found = waiter
        return found

    def oldest(self, flow: str) -> float:
        """When the flow's longest waiter arrived (the flow has one)."""
        return min(waiter.arrived for _, waiter in self._flows[flow] if waiter.queued)

    def flow_sizes(self) -> dict[str, int]:
        return dict(self._counts)

    def waiting_per_model(self) -> dict[str, int]:
        """How many wait, per model asked for."""
        counts: dict[str, int] = {}
        for heap in self._flows.values():
            for _, waiter in heap:
                if waiter.queued:
                    counts[waiter.ask.model] = counts.get(waiter.ask.model, 0) + 1
        return counts
