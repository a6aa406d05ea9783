"""SGLang-style cache-aware routing: cache affinity while balanced, least load when not.

Imbalanced when max - min in-flight > `balance_abs_threshold` and max > min x
`balance_rel_threshold`: then least load. Otherwise the best-matching worker if its match rate
exceeds `cache_threshold`, else least load. Defaults are sglang-router's (`--cache-threshold
0.3`, `--balance-abs-threshold 64`, `--balance-rel-threshold 1.5`); the match comes from the
shared prefix index (blocks) rather than a per-policy radix tree (characters).
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
        self._fallback = LeastLoad(params)

    def pick(self, request: RoutingRequest, candidates: Sequence[Worker]) -> Worker:
        loads = [w.in_flight for w in candidates]
        high, low = max(loads), min(loads)
        balanced = not (high - low > self._abs and high > low * self._rel)
        match = request.prefix
        if balanced and match is not None:
            best = max(candidates, key=lambda w: (match.blocks(w.id), -w.in_flight))
            if match.rate(best.id) > self._threshold:
                return best
        return self._fallback.pick(request, candidates)


DESCRIPTOR = PolicyDescriptor(CacheAware.name, CacheAwareParams, CacheAware)
