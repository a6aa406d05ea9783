"""Headroom: the slots sheddable requests leave free for the bands above, sized on their demand.

How many of a model's slots: enough for those bands' recent in-flight count.

A running request is never preempted, so a higher-band request finds a slot at once only if
the sheddable bands left one free. How many to leave depends on the higher bands' demand: the
free slots are a walk that a higher-band arrival steps down (rate lambda) and a request's end
steps up (about capacity / service time, while the slots are busy); sheddable dispatches cap
it at `h`. Such a walk sits at zero - a higher-band newcomer must wait for a slot to end - a
share 1 / (1 + r + ... + r**h) of the time, with r = capacity / (lambda x service time) =
capacity / (the higher bands' mean in-flight count, by Little's law). The headroom is the
smallest `h` that brings that share under `miss_rate`. The mean in-flight count is a
time-weighted moving average (time constant `_TAU_SECS`), so the headroom follows the higher
bands' demand: none when they are idle, most of the fleet when they fill it.

llm-d-router's holdback policies lower the sheddable bands' ceiling as the pool's
utilization rises, by rank and without a learned demand (pkg/epp/framework/plugins/
flowcontrol/usagelimits/priorityholdback/README.md:31; softreflectiveceiling/README.md:23);
the picker's `sheddable_share` is that fixed ceiling. Measured against it in
docs/benchmarks.md (issue 26).
"""

from __future__ import annotations

import math
from collections.abc import Callable

__all__ = ["Headroom"]

# How quickly the mean follows the higher bands' demand: 63% of a step after 2 s, 95% after
# 6 s. Shorter warms up faster after they appear (until then sheddable requests fill slots
# they will want); longer averages more of their requests (each holds a slot ~0.1-1 s).
_TAU_SECS = 2.0
# A mean under this (after the higher bands went idle) is forgotten: no headroom kept.
_NEGLIGIBLE = 0.01


class _Demand:
    """One model's higher-band in-flight count and its moving average."""

    __slots__ = ("level", "mean", "since")

    def __init__(self, now: float) -> None:
        self.level = 0
        self.mean = 0.0
        self.since = now

    def advance(self, now: float) -> None:
        """The mean as of `now`: `level` has held since `since`."""
        decay = math.exp(-max(0.0, now - self.since) / _TAU_SECS)
        self.mean = self.level + (self.mean - self.level) * decay
        self.since = now


class Headroom:
    """Per model; the caller serializes calls (the flow controller's lock)."""

    def __init__(self, miss_rate: float, clock: Callable[[], float]) -> None:
        """`miss_rate`: the share of time a higher-band request may find no free slot because
        of sheddable requests; 0 keeps no headroom."""
        self._miss_rate = miss_rate
        self._clock = clock
        # Model names are client text: an entry lives while the model's higher bands are busy.
        self._demand: dict[str, _Demand] = {}

    def change(self, model: str, delta: int) -> None:
        """A higher-band request of `model` was dispatched (+1) or ended (-1)."""
        now = self._clock()
        demand = self._demand.get(model)
        if demand is None:
            demand = self._demand[model] = _Demand(now)
        demand.advance(now)
        demand.level += delta

    def slots(self, model: str, capacity: int) -> int:
        """How many of `capacity` slots to leave free. Never all of them: an idle model
        always takes a sheddable request."""
        demand = self._demand.get(model)
        if demand is None or not self._miss_rate or capacity <= 1:
            return 0
        demand.advance(self._clock())
        if demand.mean < _NEGLIGIBLE:
            if not demand.level:
                del self._demand[model]
            return 0
        ratio = capacity / demand.mean
        reach, term = 1.0, 1.0  # 1 + r + ... + r**h, r**h
        for headroom in range(capacity - 1):
            if reach * self._miss_rate >= 1:
                return headroom
            term *= ratio
            reach += term
        return capacity - 1
