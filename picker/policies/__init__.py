"""Built-in routing policies: the one table that names them, and building one from config."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from picker.errors import ConfigError
from picker.policies import (
    cache_aware,
    engine_signal,
    least_load,
    lora_affinity,
    power_of_two,
    prefix_cache,
    random,
    round_robin,
    session_affinity,
    weighted,
)
from picker.policies.base import Policy, PolicyDescriptor, PolicyParams, StaleAfterParams

__all__ = ["POLICIES", "Policy", "PolicyDescriptor", "PolicyParams", "create_policy",
           "parse_params"]

POLICIES: Mapping[str, PolicyDescriptor[Any]] = {
    d.name: d for d in (
        round_robin.DESCRIPTOR, random.DESCRIPTOR, least_load.DESCRIPTOR,
        power_of_two.DESCRIPTOR, prefix_cache.DESCRIPTOR, cache_aware.DESCRIPTOR,
        session_affinity.DESCRIPTOR, engine_signal.LEAST_QUEUE, engine_signal.LEAST_KV,
        weighted.DESCRIPTOR, lora_affinity.DESCRIPTOR,
    )
}


def parse_params(name: str, raw: Mapping[str, Any] | None, key: str = "policy",
                 stale_after_secs: float | None = None, flat: bool = False) -> PolicyParams:
    """Validate `raw` as policy `name`'s parameters; errors name the key as the user wrote
    it: `<key>.params.<field>` and `<key>.name` for a `{name, params}` section, or
    `<key>.<field>` and `<key>` itself when `flat` (`policies: {<name>: {<field>: ...}}`).
    `stale_after_secs` fills the parameter of the same name for policies reading engine
    metrics when the config leaves it unset."""
    descriptor = POLICIES.get(name)
    if descriptor is None:
        known = ", ".join(sorted(POLICIES))
        raise ConfigError(key if flat else f"{key}.name",
                          f"unknown policy {name!r} (known: {known})")
    try:
        params: PolicyParams = descriptor.parse(dict(raw or {}))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        params_key = key if flat else f"{key}.params"
        raise ConfigError(params_key + (f".{where}" if where else ""),
                          f"{name}: {first['msg'].removeprefix('Value error, ')}") from exc
    if (isinstance(params, StaleAfterParams) and params.stale_after_secs is None
            and stale_after_secs is not None):
        params = params.model_copy(update={"stale_after_secs": stale_after_secs})
    return params


def create_policy(name: str, params: Mapping[str, Any] | PolicyParams | None = None) -> Policy:
    """Build a policy by name from raw or already-parsed parameters."""
    if not isinstance(params, PolicyParams):
        params = parse_params(name, params)
    return POLICIES[name].create(params)
