"""Router: turns a RoutingRequest into a Lease on one worker, the core call both adapters make."""

from __future__ import annotations

import threading
import time
from collections.abc import Collection
from dataclasses import replace

from picker.config import PickerConfig
from picker.errors import (
    InvalidRequest,
    ModelNotFound,
    NoHealthyWorker,
    Overloaded,
    RequestError,
)
from picker.limits import Admission, LimitSettings
from picker.policies import POLICIES, Policy, create_policy
from picker.prefix.index import PromptBlocks
from picker.prefix.producer import PrefixProducer
from picker.registry import Worker, WorkerRegistry
from picker.request import RoutingRequest
from picker.telemetry import IMBALANCE_ABS_COUNT, PickerMetrics, match_bucket

__all__ = ["STRATEGY_HEADER", "Lease", "Router", "build_router"]


# What each request outcome tells the worker's circuit breaker; cancellations say nothing.
_CIRCUIT_OUTCOMES = {"completed": True, "upstream_error": False}


class Lease:
    """One request's in-flight slot on a worker.

    Adapters learn that a request ended from several places (stream end, reset, error, timeout)
    and may hear of it more than once; `release` counts the first call only, so load returns to
    exactly zero whatever the order of events.
    """

    __slots__ = ("worker", "_router", "_open", "started")

    def __init__(self, worker: Worker, router: Router) -> None:
        self.worker = worker
        self._router = router
        self._open = True
        self.started = time.monotonic()

    def release(self, outcome: str) -> bool:
        """Free the slot once; returns False if it was already released."""
        with self._router.lease_lock:
            if not self._open:
                return False
            self._open = False
            self._router.open_leases.pop(id(self), None)
            outcomes = self._router.outcomes
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
        self._router.workers.release(self.worker)
        self._router.admission.leave()
        if outcome in _CIRCUIT_OUTCOMES:
            self.worker.circuit.record(_CIRCUIT_OUTCOMES[outcome])
        self._router.metrics.requests.labels(outcome).inc()
        return True

    @property
    def open(self) -> bool:
        return self._open


# A request may name another policy than the configured one (documented in the README).
STRATEGY_HEADER = "x-routing-strategy"


class Router:
    def __init__(self, workers: WorkerRegistry, policy: Policy, metrics: PickerMetrics,
                 prefix: PrefixProducer | None = None,
                 limits: LimitSettings | None = None) -> None:
        self.workers = workers
        self.policy = policy
        self.metrics = metrics
        self.prefix = prefix
        self.limits = limits or LimitSettings()
        self.admission = Admission(self.limits)
        self.lease_lock = threading.Lock()
        self.open_leases: dict[int, Lease] = {}
        self.outcomes: dict[str, int] = {}  # finished requests by outcome (success ratio)
        # Set on SIGTERM: /ready turns false so load balancers stop sending new traffic.
        self.draining = False
        metrics.watch_admission(self.admission, self.outcomes)
        self._policies: dict[str, Policy] = {policy.name: policy}
        if prefix is not None:
            workers.add_listener(prefix)
            metrics.watch_prefix_index(prefix.index)

    @property
    def needs_prepare(self) -> bool:
        """True when picks need an awaited step first: a remote tokenizer, or a waiting queue
        for admission."""
        remote = self.prefix is not None and self.prefix.remote is not None
        return remote or (self.admission.limit > 0 and self.limits.queue_size > 0)

    async def prepare(self, request: RoutingRequest) -> RoutingRequest:
        """The awaited steps, then `pick(..., admitted=True)`: remote tokenization (with
        fallback allowed, a failure leaves character blocks) and queueing for admission."""
        if self.prefix is not None and self.prefix.remote is not None:
            tokens = await self.prefix.remote.tokens(request)
            if tokens is None:
                self.metrics.tokenizer_fallbacks.inc()
            else:
                request = replace(request, tokens=tokens)
        await self.admission.enter()
        return request

    def pick(self, request: RoutingRequest, admitted: bool = False) -> Lease:
        """Choose a worker and take an in-flight slot on it; raises RequestError if none fits.

        `admitted`: prepare() already took the admission slot (it is given back on error)."""
        if not admitted:
            self.admission.try_enter()
        try:
            worker = self.choose(request)
        except RequestError:
            self.admission.leave()
            raise
        return self._lease(worker)

    def lease(self, worker: Worker) -> Lease:
        """Take a slot on a worker chosen earlier (LiteLLM chooses, then calls, separately)."""
        self.admission.try_enter()
        return self._lease(worker)

    def _lease(self, worker: Worker) -> Lease:
        self.workers.acquire(worker)
        lease = Lease(worker, self)
        with self.lease_lock:
            self.open_leases[id(lease)] = lease
        return lease

    def expire(self, now: float | None = None) -> int:
        """Release leases older than limits.timeout_secs (the picker never heard their end)."""
        cutoff = (now if now is not None else time.monotonic()) - self.limits.timeout_secs
        with self.lease_lock:
            stale = [lease for lease in self.open_leases.values() if lease.started < cutoff]
        return sum(lease.release("timeout") for lease in stale)

    @property
    def active_requests(self) -> int:
        return self.admission.active

    def choose(self, request: RoutingRequest, allowed: Collection[str] | None = None) -> Worker:
        """The decision alone. `allowed` (worker ids) narrows the candidates further, e.g. to
        the deployments LiteLLM has not cooled down."""
        started = time.perf_counter()
        policy = self._policy_for(request)
        serving = self.workers.for_model(request.model)
        if not serving:
            raise ModelNotFound(f"no worker serves model {request.model[:100]!r}", param="model")
        candidates = [w for w in serving
                      if w.routable and (allowed is None or w.id in allowed)]
        if not candidates:
            raise NoHealthyWorker(f"no healthy worker for model {request.model[:100]!r}")
        cap = self.limits.per_worker_max
        if cap:
            candidates = [w for w in candidates if w.in_flight < cap]
            if not candidates:
                raise Overloaded(f"every worker serving {request.model[:100]!r} is at its limit "
                                 f"of {cap} requests; retry later",
                                 retry_after=self.limits.retry_after_secs)
        prompt: PromptBlocks | None = None
        if self.prefix is not None:
            request, prompt = self.prefix.annotate(request, candidates)
        worker = policy.pick(request, candidates)
        if len(candidates) > 1:
            loads = [w.in_flight for w in candidates]
            if max(loads) - min(loads) > IMBALANCE_ABS_COUNT:
                self.metrics.load_imbalance.inc()
        if self.prefix is not None and prompt is not None:
            self.prefix.record(prompt, worker)
        self.metrics.decision_seconds.observe(time.perf_counter() - started)
        self.metrics.decisions.labels(policy.name, worker.id).inc()
        # Only registered model names become label values: a wildcard worker must not let
        # clients mint time series with made-up model names.
        model = request.model if request.model in self.workers.models() else "other"
        rate = None if request.prefix is None else request.prefix.rate(worker.id)
        self.metrics.routing_decisions.labels(model, policy.name, match_bucket(rate)).inc()
        return worker

    def _policy_for(self, request: RoutingRequest) -> Policy:
        name = request.headers.get(STRATEGY_HEADER)
        if not name:
            return self.policy
        policy = self._policies.get(name)
        if policy is None:
            if name not in POLICIES:
                known = ", ".join(sorted(POLICIES))
                raise InvalidRequest(f"unknown {STRATEGY_HEADER} {name[:100]!r} (known: {known})",
                                     param=STRATEGY_HEADER)
            policy = create_policy(name)
            if policy.needs_prefix and self.prefix is None:
                raise InvalidRequest(f"{STRATEGY_HEADER} {name} needs the prefix index, which "
                                     "is not enabled (prefix.enabled)", param=STRATEGY_HEADER)
            self._policies[name] = policy
        return policy

    def reject(self, error: RequestError) -> None:
        """Count a refused request; adapters call it where they turn the error into a reply."""
        self.metrics.requests.labels("rejected").inc()
        self.metrics.rejections.labels(error.code).inc()


def build_router(config: PickerConfig) -> Router:
    """The core both adapters share, assembled from validated configuration."""
    workers = WorkerRegistry(config.workers, config.circuit)
    policy = create_policy(config.policy.name, config.policy.params)
    prefix = PrefixProducer(config.prefix) if config.prefix.enabled else None
    return Router(workers, policy, PickerMetrics(workers), prefix, config.limits)
