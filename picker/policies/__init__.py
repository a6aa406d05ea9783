"""Built-in routing policies and the one table that names them."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from picker.errors import ConfigError
from picker.policies.base import Policy
from picker.policies.cache_aware import CacheAware
from picker.policies.engine_signal import LeastKv, LeastQueue
from picker.policies.least_load import LeastLoad
from picker.policies.power_of_two import PowerOfTwo
from picker.policies.prefix_cache import PrefixCache
from picker.policies.random import Random
from picker.policies.round_robin import RoundRobin
from picker.policies.session_affinity import SessionAffinity
from picker.policies.weighted import Weighted

__all__ = ["POLICIES", "READS_ENGINE", "Policy", "create_policy"]

POLICIES: Mapping[str, Callable[..., Policy]] = {
    RoundRobin.name: RoundRobin,
    Random.name: Random,
    LeastLoad.name: LeastLoad,
    PowerOfTwo.name: PowerOfTwo,
    PrefixCache.name: PrefixCache,
    CacheAware.name: CacheAware,
    SessionAffinity.name: SessionAffinity,
    LeastQueue.name: LeastQueue,
    LeastKv.name: LeastKv,
    Weighted.name: Weighted,
}
# Policies reading engine metrics: their `stale_after_secs` defaults to load.stale_after_secs.
READS_ENGINE: frozenset[str] = frozenset({LeastQueue.name, LeastKv.name, Weighted.name})


def create_policy(name: str, params: Mapping[str, Any] | None = None) -> Policy:
    """Build a policy by name; unknown names and parameters are configuration errors."""
    factory = POLICIES.get(name)
    if factory is None:
        known = ", ".join(sorted(POLICIES))
        raise ConfigError("policy.name", f"unknown policy {name!r} (known: {known})")
    try:
        return factory(**dict(params or {}))
    except (TypeError, ValueError) as exc:
        raise ConfigError("policy.params", f"{name}: {exc}") from exc
