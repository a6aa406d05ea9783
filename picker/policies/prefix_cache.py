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

import math
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
                    # The ceiling is at least the mean (factor >= 0, finite): a load not above
                    # the mean needs no standard deviation.
                    if load <= mean:
                        return worker
                    if ceiling is None:
                        ceiling = mean + self._factor * pstdev(loads)
                    if load <= ceiling:
                        return worker
        return self._fallback.pick(request, pool)


def pstdev(loads: Sequence[int]) -> float:
    """statistics.pstdev of integers - the correctly rounded square root of their exact
    population variance - without its Fractions (~40 us for 8 loads, most of a decision).

    n^2 x variance is the integer n x sum(x^2) - sum(x)^2 = `num` (den = n^2). A float square
    root of the rounded ratio is within 2 ulps of the true root t; it is moved while t lies
    beyond the midpoint to a neighbour, compared exactly in integers. t never equals such a
    midpoint (an odd 54-bit integer times a power of two) unless num >= 2^106: statistics'
    own result above that.
    """
    n = len(loads)
    total = sum(loads)
    num, den = n * sum(x * x for x in loads) - total * total, n * n
    if num >= 1 << 106:
        return statistics.pstdev(loads)
    root = math.sqrt(num / den)
    while root > 0 and _below_midpoint(num, den, math.nextafter(root, 0.0), root):
        root = math.nextafter(root, 0.0)
    while not _below_midpoint(num, den, root, up := math.nextafter(root, math.inf)):
        root = up
    return root


def _below_midpoint(num: int, den: int, low: float, high: float) -> bool:
    """sqrt(num / den) < (low + high) / 2, exactly."""
    low_num, low_den = low.as_integer_ratio()
    high_num, high_den = high.as_integer_ratio()
    mid_num = low_num * high_den + high_num * low_den  # mid = mid_num / (2 low_den high_den)
    mid_den = 2 * low_den * high_den
    return num * mid_den * mid_den < mid_num * mid_num * den


DESCRIPTOR = PolicyDescriptor(PrefixCache.name, PrefixCacheParams, PrefixCache)
