"""Picker: the whole of what an adapter (ext_proc, ext_authz, LiteLLM) may ask of the picker.

Declared here, where adapters read it, in the spirit of the Gateway API Inference Extension's
director, which names the narrow interfaces it consumes: route a request to a lease (which
carries the headers that reach its worker and the fallbacks of the router that chose it), count
a refusal, find workers, and explain a decision. No adapter reaches the registry, the
configuration or the routers; the lease reports the request's end (`Lease.release` with an
`Outcome`) and what the proxy observed of it (`Lease.observe`).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Protocol

from picker.errors import RequestError
from picker.fleet.registry import Worker
from picker.routing.leases import Lease
from picker.routing.request import RoutingRequest

__all__ = ["Picker", "Worker"]  # Worker: the type of what workers() and leases hand out


class Picker(Protocol):
    @property
    def awaits(self) -> bool:
        """True when routing has an awaited step (remote tokenizer, admission queue, a
        prefill/decode pair's prefill): then an adapter on the picker's loop must `route`;
        False, `route_sync` answers in the same call."""
        ...

    @property
    def default_policy(self) -> str:
        """The policy a request gets when it names none (access log entries of refusals)."""
        ...

    async def route(self, request: RoutingRequest, allowed: Collection[str] | None = None,
                    fallbacks: int = 0) -> Lease:
        """Choose a worker and open a lease on it; raises RequestError if none fits.
        `allowed`: worker ids the candidates are narrowed to. `fallbacks`: how many more
        workers the lease lists for a proxy that retries down a list."""
        ...

    def route_sync(self, request: RoutingRequest, allowed: Collection[str] | None = None,
                   fallbacks: int = 0) -> Lease:
        """`route` for synchronous callers; never on the picker's own loop when `awaits`."""
        ...

    def reject(self, error: RequestError) -> None:
        """Count a refused request where the adapter turns the error into its reply."""
        ...

    def workers(self) -> Sequence[Worker]:
        """Every registered worker (subset hints, gateway probes, the model list)."""
        ...

    def worker_at(self, host_port: str) -> Worker | None:
        """The worker at `host:port` (the endpoint a proxy reports as having served)."""
        ...

    def explanation(self, headers: Mapping[str, str], lease: Lease) -> str | None:
        """The explain header's line for `lease`'s decision, when configured and asked for."""
        ...
