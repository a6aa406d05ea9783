"""SGLang-style cache-aware routing: cache affinity while balanced, least load when not.

Imbalanced when max - min in-flight > `balance_abs_threshold` and max > min x
`balance_rel_threshold`: then least load. Otherwise the best-matching worker if its match rate
exceeds `cache_threshold`, else least load. Defaults are sglang-router's (`--cache-threshold
0.3`, `--balance-abs-threshold 64`, `--balance-rel-threshold 1.5`); the match comes from the
shared prefix index (blocks) rather than a per-policy radix tree (characters).
"""

from __future__ import annotations

from collections.abc import Sequence

from picker.policies.least_load import LeastLoad
from picker.registry import Worker
from picker.request import RoutingRequest


class CacheAware:
    name = "cache_aware"
    needs_prefix = True

    def __init__(self, cache_threshold: float = 0.3, balance_abs_threshold: int = 64,
                 balance_rel_threshold: float = 1.5, seed: int | None = None) -> None:
        if not 0 <= cache_threshold <= 1:
            raise ValueError("cache_threshold must be within [0, 1]")
        self._threshold = cache_threshold
        self._abs = balance_abs_threshold
        self._rel = balance_rel_threshold
        self._fallback = LeastLoad(seed)

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
