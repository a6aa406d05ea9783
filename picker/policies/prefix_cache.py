"""AIBrix-style prefix-cache routing: prefer the worker holding the longest prompt prefix,
unless load is too uneven or that worker is a load outlier.

1. If max - min in-flight across candidates exceeds `imbalance_abs_count`, restrict to the
   least loaded candidates (still matching inside them).
2. Among workers with the best match, ordered by match then load, take the first whose load is
   at most mean + `std_dev_factor` x stddev of all candidates' loads.
3. No match (or every match is an outlier): least load.

Defaults are AIBrix's (`AIBRIX_PREFIX_CACHE_POD_RUNNING_REQUEST_IMBALANCE_ABS_COUNT` = 16,
`AIBRIX_PREFIX_CACHE_STANDARD_DEVIATION_FACTOR` = 2).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from pydantic import Field

from picker.fleet.registry import Worker
from picker.policies.base import PolicyDescriptor, SeededParams
from picker.policies.least_load import LeastLoad
from picker.routing.request import RoutingRequest


class PrefixCacheParams(SeededParams):
    imbalance_abs_count: int = Field(default=16, ge=0)
    std_dev_factor: float = Field(default=2.0, ge=0)

    def needs_prefix(self) -> bool:
        return True


class PrefixCache:
    name = "prefix_cache"

    def __init__(self, params: PrefixCacheParams) -> None:
        self._imbalance = params.imbalance_abs_count
        self._factor = params.std_dev_factor
        self._fallback = LeastLoad(params)

    def pick(self, request: RoutingRequest, candidates: Sequence[Worker]) -> Worker:
        loads = [w.in_flight for w in candidates]  # read once (see least_load)
        pool: Sequence[Worker] = candidates
        low = min(loads)
        if max(loads) - low > self._imbalance:
            pool = [w for w, load in zip(candidates, loads, strict=True) if load == low]
        match = request.prefix
        if match is not None:
            matched = sorted((w for w in pool if match.blocks(w.id)),
                             key=lambda w: (-match.blocks(w.id), w.in_flight))
            if matched:
                mean = statistics.fmean(loads)
                ceiling: float | None = None
                for worker in matched:
                    load = worker.in_flight
                    # The ceiling is at least the mean (factor >= 0, finite): a load not above the
                    # mean needs no standard deviation, which (exact, over Fractions) is the
                    # most expensive step of a decision.
                    if load <= mean:
                        return worker
                    if ceiling is None:
                        ceiling = mean + self._factor * statistics.pstdev(loads)
                    if load <= ceiling:
                        return worker
        return self._fallback.pick(request, pool)


DESCRIPTOR = PolicyDescriptor(PrefixCache.name, PrefixCacheParams, PrefixCache)
