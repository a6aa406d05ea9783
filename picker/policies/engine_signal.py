"""least_queue and least_kv: the engine's own view of its load, when it is fresh.

Workers whose metrics are missing or stale do not compete on the signal; if no candidate has
a fresh value the policy falls back to the picker's in-flight count, never to a stale number.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from picker.fleet.engine_load import EngineSignal
from picker.fleet.registry import Worker
from picker.policies.base import PolicyDescriptor, StaleAfterParams
from picker.policies.least_load import LeastLoad
from picker.policies.scorers import DEFAULT_STALE_SECS, fresh_engine_value
from picker.routing.request import RoutingRequest


class LeastQueueParams(StaleAfterParams):
    def engine_signals(self) -> frozenset[EngineSignal]:
        return frozenset({EngineSignal.WAITING})


class LeastKvParams(StaleAfterParams):
    def engine_signals(self) -> frozenset[EngineSignal]:
        return frozenset({EngineSignal.KV_USAGE})


class _LeastEngineValue:
    name = ""
    signal = EngineSignal.WAITING

    def __init__(self, params: StaleAfterParams) -> None:
        self._stale = params.stale_after_secs or DEFAULT_STALE_SECS
        self._fallback = LeastLoad(params)

    def pick(self, request: RoutingRequest, candidates: Sequence[Worker]) -> Worker:
        now = time.monotonic()
        known = [(v, w) for w in candidates
                 if (v := fresh_engine_value(w, self.signal, now, self._stale)) is not None]
        if not known:
            return self._fallback.pick(request, candidates)
        best = min(v for v, _ in known)
        return self._fallback.pick(request, [w for v, w in known if v == best])


class LeastQueue(_LeastEngineValue):
    name = "least_queue"
    signal = EngineSignal.WAITING


class LeastKv(_LeastEngineValue):
    name = "least_kv"
    signal = EngineSignal.KV_USAGE


LEAST_QUEUE = PolicyDescriptor(LeastQueue.name, LeastQueueParams, LeastQueue)
LEAST_KV = PolicyDescriptor(LeastKv.name, LeastKvParams, LeastKv)
