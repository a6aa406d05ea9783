"""Router: turns a RoutingRequest into a Lease on one worker, the core call both adapters make."""

from __future__ import annotations

import time

from picker.config import PickerConfig
from picker.errors import ModelNotFound, NoHealthyWorker, RequestError
from picker.policies import Policy, create_policy
from picker.registry import Worker, WorkerRegistry
from picker.request import RoutingRequest
from picker.telemetry import PickerMetrics

__all__ = ["Lease", "Router", "build_router"]


# What each request outcome tells the worker's circuit breaker; cancellations say nothing.
_CIRCUIT_OUTCOMES = {"completed": True, "upstream_error": False}


class Lease:
    """One request's in-flight slot on a worker.

    Adapters learn that a request ended from several places (stream end, reset, error, timeout)
    and may hear of it more than once; `release` counts the first call only, so load returns to
    exactly zero whatever the order of events.
    """

    __slots__ = ("worker", "_router", "_open")

    def __init__(self, worker: Worker, router: Router) -> None:
        self.worker = worker
        self._router = router
        self._open = True

    def release(self, outcome: str) -> bool:
        """Free the slot once; returns False if it was already released."""
        if not self._open:
            return False
        self._open = False
        self._router.workers.release(self.worker)
        if outcome in _CIRCUIT_OUTCOMES:
            self.worker.circuit.record(_CIRCUIT_OUTCOMES[outcome])
        self._router.metrics.requests.labels(outcome).inc()
        return True

    @property
    def open(self) -> bool:
        return self._open


class Router:
    def __init__(self, workers: WorkerRegistry, policy: Policy, metrics: PickerMetrics) -> None:
        self.workers = workers
        self.policy = policy
        self.metrics = metrics

    def pick(self, request: RoutingRequest) -> Lease:
        """Choose a worker and take an in-flight slot on it; raises RequestError if none fits."""
        started = time.perf_counter()
        serving = self.workers.for_model(request.model)
        if not serving:
            raise ModelNotFound(f"no worker serves model {request.model[:100]!r}", param="model")
        candidates = [w for w in serving if w.routable]
        if not candidates:
            raise NoHealthyWorker(f"no healthy worker for model {request.model[:100]!r}")
        worker = self.policy.pick(request, candidates)
        self.workers.acquire(worker)
        self.metrics.decision_seconds.observe(time.perf_counter() - started)
        self.metrics.decisions.labels(self.policy.name, worker.id).inc()
        return Lease(worker, self)

    def reject(self, error: RequestError) -> None:
        """Count a refused request; adapters call it where they turn the error into a reply."""
        self.metrics.requests.labels("rejected").inc()
        self.metrics.rejections.labels(error.code).inc()


def build_router(config: PickerConfig) -> Router:
    """The core both adapters share, assembled from validated configuration."""
    workers = WorkerRegistry(config.workers, config.circuit)
    policy = create_policy(config.policy.name, config.policy.params)
    return Router(workers, policy, PickerMetrics(workers))
