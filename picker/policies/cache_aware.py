"""SGLang's cache-aware routing: cache affinity while balanced, most free cache when no match.

Imbalanced when max - min in-flight > `balance_abs_threshold` and max > min x
`balance_rel_threshold`: then the least loaded worker. Balanced: the worker with the longest
cached prefix if its match rate exceeds `cache_threshold`, else the worker whose tree is
smallest - the one with the most cache to spare, so new prefixes spread over the caches
(sgl-router's `Tree::get_smallest_tenant`). Defaults are sglang-router's (`--cache-threshold
0.3`, `--balance-abs-threshold 64`, `--balance-rel-threshold 1.5`). The match and tree sizes
come from the shared prefix index (blocks) rather than a per-policy radix tree (characters).

The least-load variant (an unmatched request to the least loaded worker, what the SMG fork does
today) measured a lower hit rate on the heterogeneous routing benchmark (docs/benchmarks.md),
so it is not offered.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import Field

from picker.policies.base import PolicyDescriptor, SeededParams
from picker.policies.least_load import LeastLoad
from picker.registry import Worker
from picker.request import RoutingRequest


class CacheAwareParams(SeededParams):
    cache_threshold: float = Field(default=0.3, ge=0, le=1)
    balance_abs_threshold: int = Field(default=64, ge=0)
    balance_rel_threshold: float = Field(default=1.5, gt=0)

    def needs_prefix(self) -> bool:
        return True


class CacheAware:
    name = "cache_aware"

    def __init__(self, params: CacheAwareParams) -> None:
        self._threshold = params.cache_threshold
        self._abs = params.balance_abs_threshold
        self._rel = params.balance_rel_threshold
        self._least_load = LeastLoad(params)

    def pick(self, request: RoutingRequest, candidates: Sequence[Worker]) -> Worker:
        loads = [w.in_flight for w in candidates]
        high, low = max(loads), min(loads)
        if high - low > self._abs and high > low * self._rel:
            return self._least_load.pick(request, candidates)
        match = request.prefix
        if match is None:
            return self._least_load.pick(request, candidates)
        best = max(candidates, key=lambda w: (match.blocks(w.id), -w.in_flight))
        if match.rate(best.id) > self._threshold:
            return best
        # The smallest tree; equal trees (an empty fleet) by load.
        held = match.held
        smallest = min(held.get(w.id, 0) for w in candidates)
        return self._least_load.pick(
            request, [w for w in candidates if held.get(w.id, 0) == smallest])


DESCRIPTOR = PolicyDescriptor(CacheAware.name, CacheAwareParams, CacheAware)
