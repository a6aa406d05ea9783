"""Is there room to dispatch one more request for a model? Read off signals the picker has.

The picker's own count of requests in flight against a configured capacity per worker, as
llm-d-router's concurrency detector reads it
(pkg/epp/framework/plugins/flowcontrol/saturationdetector/concurrency/detector.go:122-131): it
is exact and moves the moment a request is dispatched, so a burst cannot overshoot it.

A worker has room when it is routable and under its capacity; the model has room when one of
its workers has. Requests dispatched but not yet opened on a worker (the router is
still choosing) count against the model through `pending`.
"""

from __future__ import annotations

import enum

from picker.fleet.registry import WorkerRegistry
from picker.routing.flow.settings import SaturationSettings

__all__ = ["Room", "SaturationDetector"]


class Room(enum.Enum):
    FREE = "free"
    SATURATED = "saturated"
    # The model's workers are all unready (starting, unhealthy), or the whole fleet is
    # (scaled to zero): worth waiting for.
    NO_WORKER = "no_worker"
    # Ready workers exist, none serves the model: the router answers (404), nothing to wait for.
    UNSERVED = "unserved"


class SaturationDetector:
    def __init__(self, registry: WorkerRegistry, settings: SaturationSettings) -> None:
        self._registry = registry
        self._settings = settings

    def room(self, model: str, pending: int) -> Room:
        serving = self._registry.for_model(model)
        workers = [w for w in serving if w.routable]
        if not workers:
            if serving or not any(w.routable for w in self._registry.workers()):
                return Room.NO_WORKER
            return Room.UNSERVED
        limit = self._settings.max_in_flight_per_worker
        if limit and sum(max(0, limit - w.in_flight) for w in workers) <= pending:
            return Room.SATURATED
        return Room.FREE
