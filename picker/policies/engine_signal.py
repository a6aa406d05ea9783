"""least_queue and least_kv: the engine's own view of its load, when it is fresh.

Workers whose metrics are missing or stale do not compete on the signal; if no candidate has
a fresh value the policy falls back to the picker's in-flight count, never to a stale number.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from picker.policies.least_load import LeastLoad
from picker.policies.scorers import fresh_engine_value
from picker.registry import Worker
from picker.request import RoutingRequest


class _LeastEngineValue:
    name = ""
    field = ""
    needs_prefix = False

    def __init__(self, stale_after_secs: float = 5.0, seed: int | None = None) -> None:
        if not stale_after_secs > 0:  # NaN too
            raise ValueError("stale_after_secs must be > 0")
        self._stale = stale_after_secs
        self._fallback = LeastLoad(seed)

    def pick(self, request: RoutingRequest, candidates: Sequence[Worker]) -> Worker:
        now = time.monotonic()
        known = [(v, w) for w in candidates
                 if (v := fresh_engine_value(w, self.field, now, self._stale)) is not None]
        if not known:
            return self._fallback.pick(request, candidates)
        best = min(v for v, _ in known)
        return self._fallback.pick(request, [w for v, w in known if v == best])


class LeastQueue(_LeastEngineValue):
    name = "least_queue"
    field = "waiting"


class LeastKv(_LeastEngineValue):
    name = "least_kv"
    field = "kv_usage"
