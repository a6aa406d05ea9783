"""Router: the decision alone - a RoutingRequest and the registry's candidates in, one worker out.

Synchronous and free of I/O and of bookkeeping: admission and in-flight slots are the lease
book's (picker.leases), the awaited steps and the order of calls the runtime's (picker.runtime).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Collection, Mapping

from picker.errors import (
    InvalidRequest,
    ModelNotFound,
    NoHealthyWorker,
    Overloaded,
)
from picker.limits import LimitSettings
from picker.policies import POLICIES, Policy, PolicyParams, create_policy, parse_params
from picker.prefix.index import PromptBlocks
from picker.prefix.producer import PrefixProducer
from picker.registry import Worker, WorkerRegistry
from picker.request import RoutingRequest
from picker.telemetry import IMBALANCE_ABS_COUNT, PickerMetrics, match_bucket

__all__ = ["STRATEGY_HEADER", "Router"]


# A request may name another policy than the configured one (documented in the README).
STRATEGY_HEADER = "x-routing-strategy"


class Router:
    """Chooses a worker for a request among the registry's routable candidates."""

    def __init__(self, workers: WorkerRegistry, policy: str, params: Mapping[str, PolicyParams],
                 metrics: PickerMetrics, prefix: PrefixProducer | None = None,
                 limits: LimitSettings | None = None, stale_after_secs: float | None = None
                 ) -> None:
        """`params`: the configured parameters by policy name (the default `policy`'s
        included, or it runs with its defaults); a policy named by a request's
        x-routing-strategy runs with its configured parameters too."""
        self._workers = workers
        self._metrics = metrics
        self._prefix = prefix
        self._limits = limits or LimitSettings()
        self._stale = stale_after_secs
        self._params = dict(params)
        self._lock = threading.Lock()
        self._policies: dict[str, Policy] = {}
        self._default = self._policy_named(policy)

    @property
    def policy(self) -> Policy:
        """The default policy (requests without x-routing-strategy)."""
        return self._default

    @property
    def prefix(self) -> PrefixProducer | None:
        return self._prefix

    def choose(self, request: RoutingRequest, allowed: Collection[str] | None = None) -> Worker:
        """The decision alone. `allowed` (worker ids) narrows the candidates further, e.g. to
        the deployments LiteLLM has not cooled down."""
        started = time.perf_counter()
        policy = self._policy_for(request)
        serving = self._workers.for_model(request.model)
        if not serving:
            raise ModelNotFound(f"no worker serves model {request.model[:100]!r}", param="model")
        candidates = [w for w in serving
                      if w.routable and (allowed is None or w.id in allowed)]
        if not candidates:
            raise NoHealthyWorker(f"no healthy worker for model {request.model[:100]!r}")
        cap = self._limits.per_worker_max
        if cap:
            candidates = [w for w in candidates if w.in_flight < cap]
            if not candidates:
                raise Overloaded(f"every worker serving {request.model[:100]!r} is at its limit "
                                 f"of {cap} requests; retry later",
                                 retry_after=self._limits.retry_after_secs)
        prompt: PromptBlocks | None = None
        if self._prefix is not None:
            request, prompt = self._prefix.annotate(request, candidates)
        worker = policy.pick(request, candidates)
        if len(candidates) > 1:
            loads = [w.in_flight for w in candidates]
            if max(loads) - min(loads) > IMBALANCE_ABS_COUNT:
                self._metrics.load_imbalance.inc()
        if self._prefix is not None and prompt is not None:
            self._prefix.record(prompt, worker)
        self._metrics.decision_seconds.observe(time.perf_counter() - started)
        self._metrics.decisions.labels(policy.name, worker.id).inc()
        # Only registered model names become label values: a wildcard worker must not let
        # clients mint time series with made-up model names.
        model = request.model if request.model in self._workers.models() else "other"
        rate = None if request.prefix is None else request.prefix.rate(worker.id)
        self._metrics.routing_decisions.labels(model, policy.name, match_bucket(rate)).inc()
        return worker

    def fallbacks(self, request: RoutingRequest, primary: Worker, count: int,
                  allowed: Collection[str] | None = None) -> list[Worker]:
        """Up to `count` workers for the proxy to retry on if `primary` fails, least loaded
        first: routable, serving the model, inside `allowed`, at another address, and able to
        take the request with the primary's headers (same API key and data-parallel rank).

        Not a decision: the policy's state and the decision metrics are left alone, since the
        request normally never reaches them."""
        if count <= 0:
            return []
        spec = primary.spec
        others = [w for w in self._workers.for_model(request.model)
                  if w.routable and w.host_port != primary.host_port
                  and (allowed is None or w.id in allowed)
                  and w.spec.api_key == spec.api_key and w.spec.dp_rank == spec.dp_rank]
        others.sort(key=lambda w: (w.in_flight, w.id))
        return others[:count]

    def _policy_for(self, request: RoutingRequest) -> Policy:
        name = request.headers.get(STRATEGY_HEADER)
        if not name:
            return self._default
        policy = self._policies.get(name)
        if policy is not None:
            return policy
        if name not in POLICIES:
            known = ", ".join(sorted(POLICIES))
            raise InvalidRequest(f"unknown {STRATEGY_HEADER} {name[:100]!r} (known: {known})",
                                 param=STRATEGY_HEADER)
        return self._policy_named(name)

    def _policy_named(self, name: str) -> Policy:
        """The one instance of policy `name` (its cursor or tree is shared by its requests)."""
        with self._lock:
            policy = self._policies.get(name)
            if policy is not None:
                return policy
            params = self._params.get(name) or parse_params(name, {}, stale_after_secs=self._stale)
            if params.needs_prefix() and self._prefix is None:
                raise InvalidRequest(f"{STRATEGY_HEADER} {name} needs the prefix index, which "
                                     "is not enabled (prefix.enabled)", param=STRATEGY_HEADER)
            policy = self._policies[name] = create_policy(name, params)
            return policy
