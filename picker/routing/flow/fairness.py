"""Fairness between the backlogged flows of one priority band: which flow dispatches next.

Two policies, one small interface (llm-d-router's FairnessPolicy picks a flow queue from a
band, pkg/epp/framework/plugins/flowcontrol/fairness/roundrobin/roundrobin.go:76-121):

- `RoundRobin`: flows take turns, one request each, in a stable order after the last served
  (the cursor llm-d keeps per band, roundrobin.go:64-69, 105-121).
- `TokenWeighted`: the flow served the fewest tokens goes first, counting prompt tokens at
  dispatch and generated tokens when the response ends - AIBrix's virtual token counter (VTC,
  Sheng et al., "Fairness in Serving Large Language Models", OSDI 2024). A flow that was idle
  is lifted to the least counter among the backlogged flows when it returns, so idling banks
  no credit to spend in a burst later.

A policy orders candidates rather than naming one: the controller dispatches the first flow
whose next request has room (a flow waiting on a saturated model does not block a flow of
another model).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from picker.routing.flow.settings import FairnessKind

__all__ = ["Fairness", "RoundRobin", "TokenWeighted", "fairness_policy"]

# Token counters kept per band before those of flows not waiting are dropped.
_MAX_COUNTERS = 10_000


class Fairness(Protocol):
    def order(self, backlogged: Sequence[str]) -> list[str]:
        """The backlogged flows of the band, the one to serve first first."""
        ...

    def joined(self, flow: str, backlogged: Sequence[str]) -> None:
        """`flow` just became backlogged; `backlogged` are the others already waiting."""
        ...

    def dispatched(self, flow: str, tokens: float) -> None:
        """A request of `flow` with `tokens` prompt tokens was dispatched."""
        ...

    def generated(self, flow: str, tokens: float) -> None:
        """A dispatched request of `flow` ended, having generated `tokens`."""
        ...


class RoundRobin:
    def __init__(self) -> None:
        self._last: str | None = None

    def order(self, backlogged: Sequence[str]) -> list[str]:
        flows = sorted(backlogged)
        if self._last is None:
            return flows
        # First the flows after the last one served, then the rest (it included, last).
        after = [flow for flow in flows if flow > self._last]
        return after + [flow for flow in flows if flow <= self._last]

    def joined(self, flow: str, backlogged: Sequence[str]) -> None:
        pass

    def dispatched(self, flow: str, tokens: float) -> None:
        self._last = flow

    def generated(self, flow: str, tokens: float) -> None:
        pass


class TokenWeighted:
    def __init__(self) -> None:
        self._served: dict[str, float] = {}

    def order(self, backlogged: Sequence[str]) -> list[str]:
        return sorted(backlogged, key=lambda flow: (self._served.get(flow, 0.0), flow))

    def joined(self, flow: str, backlogged: Sequence[str]) -> None:
        if not backlogged or len(self._served) > _MAX_COUNTERS:
            # Counters only compare flows that wait together: alone in the band, everyone
            # starts afresh; and flows not waiting are forgotten before the dict grows large.
            self._served = {other: self._served.get(other, 0.0) for other in backlogged}
        floor = min((self._served.get(other, 0.0) for other in backlogged), default=0.0)
        self._served[flow] = max(self._served.get(flow, 0.0), floor)

    def dispatched(self, flow: str, tokens: float) -> None:
        self._served[flow] = self._served.get(flow, 0.0) + tokens

    def generated(self, flow: str, tokens: float) -> None:
        if flow in self._served:
            self._served[flow] += tokens


def fairness_policy(kind: FairnessKind) -> Fairness:
    if kind is FairnessKind.TOKENS:
        return TokenWeighted()
    return RoundRobin()
