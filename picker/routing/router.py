"""Router: the decision alone - a RoutingRequest and the registry's candidates in, one worker out.

Synchronous and free of I/O and of bookkeeping: admission and in-flight slots are the lease
book's (picker.routing.leases), the awaited steps and the order of calls the runtime's
(picker.runtime).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import NamedTuple

from picker.errors import (
    InvalidRequest,
    ModelNotFound,
    NoHealthyWorker,
    Overloaded,
    RequestError,
)
from picker.fleet.registry import Worker, WorkerRegistry
from picker.observe.decisions import Decision, DecisionLog, exclusion
from picker.observe.metrics import IMBALANCE_ABS_COUNT, PickerMetrics
from picker.policies import POLICIES, Policy, PolicyParams, create_policy, parse_params
from picker.policies.scorers import uncached_tokens
from picker.prefix.index import PromptBlocks
from picker.prefix.producer import PrefixProducer
from picker.routing import control_headers
from picker.routing.admission import LimitSettings
from picker.routing.request import RoutingRequest

__all__ = ["SPILLOVER", "STRATEGY_HEADER", "Choice", "Router"]


# A request may name another policy than the configured one (documented in the README).
STRATEGY_HEADER = control_headers.STRATEGY
# The policy name of a decision that spilled to an overflow worker (metrics, access log).
SPILLOVER = "spillover"


class Choice(NamedTuple):
    """The router's answer: the worker, the policy that chose it, the winner's prefix match
    (None without a prefix index), the record when explain is enabled, and the prompt tokens
    the worker is believed not to hold (its prefill work, counted when the lease opens)."""

    worker: Worker
    policy: str
    match: float | None
    decision: Decision | None
    uncached_tokens: float = 0.0


class Router:
    """Chooses a worker for a request among the registry's routable candidates."""

    def __init__(self, workers: WorkerRegistry, policy: str, params: Mapping[str, PolicyParams],
                 metrics: PickerMetrics, prefix: PrefixProducer | None = None,
                 limits: LimitSettings | None = None, stale_after_secs: float | None = None,
                 decisions: DecisionLog | None = None,
                 pool: Callable[[Worker], bool] | None = None) -> None:
        """`params`: the configured parameters by policy name (the default `policy`'s
        included, or it runs with its defaults); a policy named by a request's
        x-routing-strategy runs with its configured parameters too. `decisions`: where to
        record each decision (explain.enabled), None to record nothing. `pool`: the workers
        this router may choose (a role and connection mode, under enable_igw); None: all."""
        self._pool = pool
        self._workers = workers
        self._metrics = metrics
        self._prefix = prefix
        self._limits = limits or LimitSettings()
        self._stale = stale_after_secs
        self._params = dict(params)
        self._decisions = decisions
        self._lock = threading.Lock()
        self._policies: dict[str, Policy] = {}
        self._default = self._policy_named(policy)
        self.default_policy = policy  # the name, for requests without x-routing-strategy

    @property
    def decisions(self) -> DecisionLog | None:
        """The decision records, None unless explain.enabled."""
        return self._decisions

    def choose(self, request: RoutingRequest, allowed: Collection[str] | None = None) -> Choice:
        """The decision alone. `allowed` (worker ids) narrows the candidates further, e.g. to
        the deployments LiteLLM has not cooled down. Records it when explain is enabled."""
        started = time.perf_counter()
        policy = self._policy_for(request)
        serving = self._serving(request)
        candidates: list[Worker] = []
        try:
            request, candidates, worker = self._pick(request, policy, serving, allowed)
        except RequestError as error:
            if self._decisions is not None:
                self._record(request, policy, serving, candidates, allowed, None, error.code)
            raise
        if len(candidates) > 1:
            loads = [w.in_flight for w in candidates]
            if max(loads) - min(loads) > IMBALANCE_ABS_COUNT:
                self._metrics.load_imbalance.inc()
        # Only registered model names become label values: a wildcard worker must not let
        # clients mint time series with made-up model names.
        model = request.model if self._workers.has_model(request.model) else "other"
        rate = None if request.prefix is None else request.prefix.rate(worker.id)
        # A spill-over is no choice of the policy's: it is named as what it is.
        name = SPILLOVER if worker.spec.overflow and any(
            not w.spec.overflow for w in serving) else policy.name
        self._metrics.decided(name, worker.id, model, rate, time.perf_counter() - started)
        decision = None if self._decisions is None else \
            self._record(request, policy, serving, candidates, allowed, worker, None)
        return Choice(worker, name, rate, decision, uncached_tokens(request, worker))

    def _pick(self, request: RoutingRequest, policy: Policy, serving: Sequence[Worker],
              allowed: Collection[str] | None) -> tuple[RoutingRequest, list[Worker], Worker]:
        """Filter, annotate the prefix match, pick: (the annotated request, candidates, the
        winner)."""
        if not serving:
            raise ModelNotFound(f"no worker serves model {request.model[:100]!r}", param="model")
        # Overflow workers take a model's requests only once its regular workers are
        # saturated; a model that only overflow workers serve has nothing to spill from.
        regular = [w for w in serving if not w.spec.overflow] or serving
        candidates = [w for w in regular
                      if w.routable and (allowed is None or w.id in allowed)]
        if not candidates:
            why = Counter(exclusion(w, allowed).value.replace("_", " ") for w in regular)
            raise NoHealthyWorker(f"no routable worker for model {request.model[:100]!r} ("
                                  + ", ".join(f"{n} {reason}" for reason, n in sorted(
                                      why.items())) + ")")
        cap = self._limits.per_worker_max
        if cap:
            candidates = [w for w in candidates if w.in_flight < cap]
            spill = None if candidates or regular is serving else \
                self._spill(request, serving, allowed)
            if spill is not None:
                return request, [spill], spill
            if not candidates:
                raise Overloaded(f"every worker serving {request.model[:100]!r} is at its limit "
                                 f"of {cap} requests; retry later",
                                 retry_after=self._limits.retry_after_secs)
        prompt: PromptBlocks | None = None
        if self._prefix is not None:
            request, prompt = self._prefix.annotate(request, candidates)
        worker = policy.pick(request, candidates)
        if self._prefix is not None and prompt is not None:
            self._prefix.record(prompt, worker)
        return request, candidates, worker

    def _spill(self, request: RoutingRequest, serving: Sequence[Worker],
               allowed: Collection[str] | None) -> Worker | None:
        """Every regular worker of the model is saturated: the least loaded routable overflow
        worker serving it (not held to per_worker_max: its capacity is not the fleet's), or
        None when there is none."""
        spill = [w for w in serving if w.spec.overflow and w.routable
                 and (allowed is None or w.id in allowed)]
        if not spill:
            return None
        worker = min(spill, key=lambda w: (w.in_flight, w.id))
        model = request.model if self._workers.has_model(request.model) else "other"
        self._metrics.spilled(model, worker.id)
        return worker

    def _record(self, request: RoutingRequest, policy: Policy, serving: Sequence[Worker],
                candidates: Sequence[Worker], allowed: Collection[str] | None,
                worker: Worker | None, error: str | None) -> Decision:
        assert self._decisions is not None
        reads_prefix = self._params[policy.name].needs_prefix()
        return self._decisions.record(request, policy, reads_prefix, serving, candidates,
                                      self._workers.workers(), allowed, worker, error)

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
        others = [w for w in self._serving(request)
                  if w.routable and w.host_port != primary.host_port
                  and w.spec.overflow == spec.overflow
                  and (allowed is None or w.id in allowed)
                  and w.spec.api_key == spec.api_key and w.spec.dp_rank == spec.dp_rank]
        others.sort(key=lambda w: (w.in_flight, w.id))
        return others[:count]

    def _serving(self, request: RoutingRequest) -> tuple[Worker, ...]:
        """The workers of this router's pool (all, without enable_igw) serving the model: a
        regular router's fallbacks are never a prefill or decode worker."""
        serving = self._workers.for_model(request.model)
        return serving if self._pool is None else tuple(filter(self._pool, serving))

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
            self._params[name] = params
            policy = self._policies[name] = create_policy(name, params)
            return policy
