"""Is there room to dispatch one more request for a model? Read off signals the picker has.

Per worker, any threshold reached (each 0 when off) saturates it:

- requests in flight against a configured capacity, as llm-d-router's concurrency detector
  reads them (pkg/epp/framework/plugins/flowcontrol/saturationdetector/concurrency/
  detector.go:122-131): the picker's own count is exact and moves the moment a request is
  dispatched, so a burst cannot overshoot it;
- the engine's waiting queue and KV-cache usage, as llm-d's utilization detector reads them,
  either one saturating the worker (utilization/detector.go:119-156; its defaults are 5
  waiting and 0.8 KV, utilization/config.go:30-36). They come from the engine's metrics scrape
  (`load:`) and lag by up to a scrape interval; a scrape older than `max_age_secs` is ignored
  (llm-d counts a stale endpoint as saturated, detector.go:142-146: the picker also runs
  without scraping, and would then never dispatch);
- for sheddable (negative priority) requests, headroom for the bands above: a slot is not
  preempted, so a band above finds one free only if the bands below leave it. The model's
  free slots must exceed what `keep_free` asks of its capacity (picker.routing.flow.headroom
  sizes it on the higher bands' recent demand), and, when set, each worker's in-flight count
  (every band's) must be under `sheddable_share` of its capacity - a fixed ceiling, as
  llm-d's priority holdback lowers the admission ceiling of low-priority traffic as
  utilization rises (pkg/epp/flowcontrol/README.md:76-79);
- the TTFT the picker predicts for a request arriving now (the queue ahead of it at the
  engine's learned prefill rate, picker.fleet.speed.predicted_ttft), once the rate is known.

A worker has room when it is routable and under every threshold; the model has room when one
of its workers has. Requests dispatched but not yet opened on a worker (the router is still
choosing) count against the model's in-flight capacity through `pending`.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable

from picker.fleet.registry import Worker, WorkerRegistry
from picker.fleet.speed import predicted_ttft
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
    def __init__(self, registry: WorkerRegistry, settings: SaturationSettings,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._registry = registry
        self._settings = settings
        self._clock = clock

    def room(self, model: str, pending: int,
             keep_free: Callable[[int], int] | None = None) -> Room:
        """`keep_free`: for a negative priority, how many of the model's slots (its argument)
        to leave free for the bands above; it may also fill only `sheddable_share` of each
        worker's."""
        serving = self._registry.for_model(model)
        workers = [w for w in serving if w.routable]
        if not workers:
            if serving or not any(w.routable for w in self._registry.workers()):
                return Room.NO_WORKER
            return Room.UNSERVED
        now = self._clock()
        free = [w for w in workers if not self._engine_saturated(w, now)]
        limit = self._settings.max_in_flight_per_worker
        if not free:
            return Room.SATURATED
        if not limit:
            return Room.FREE
        open_slots = sum(max(0, limit - w.in_flight) for w in free) - pending
        if open_slots <= 0:
            return Room.SATURATED
        if keep_free is not None:
            ceiling = max(1, int(limit * self._settings.sheddable_share))
            if (sum(max(0, ceiling - w.in_flight) for w in free) <= pending
                    or open_slots <= keep_free(limit * len(workers))):
                return Room.SATURATED
        return Room.FREE

    def _engine_saturated(self, worker: Worker, now: float) -> bool:
        settings = self._settings
        load = worker.engine
        waiting = 0.0
        if load is not None and load.fresh(now, settings.max_age_secs):
            waiting = load.waiting or 0.0
            if settings.max_waiting and waiting >= settings.max_waiting:
                return True
            if settings.max_kv_usage and (load.kv_usage or 0.0) >= settings.max_kv_usage:
                return True
        if settings.max_predicted_ttft_secs:
            ttft = predicted_ttft(worker.speed, 0.0, waiting, worker.prefill_ahead(now))
            return ttft is not None and ttft >= settings.max_predicted_ttft_secs
        return False
