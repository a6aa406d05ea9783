"""Active health checks: poll each worker's health endpoint (a gRPC worker's HealthCheck) and
flip its `healthy` flag.

Thresholds avoid flapping: a worker is ejected after `failure_threshold` consecutive failures
and readmitted after `success_threshold` consecutive successes (the same two knobs as Envoy's
and SGLang's health checkers). Per-worker `health` overrides in WorkerSpec win over the globals.
Probes go through picker.fleet.worker_http: bounded, each within its timeout, and a dead worker's
probes never wait in front of a live one's.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from pydantic import Field

from picker.fleet.grpc_calls import EngineCallFailed
from picker.fleet.registry import Worker, WorkerRegistry
from picker.fleet.worker_loops import WorkerLoops
from picker.fleet.worker_spec import ConnectionMode, HealthPath, PollSecs
from picker.strict import StrictModel

__all__ = ["HealthChecker", "HealthSettings"]

log = logging.getLogger("llm_picker.health")


class HealthSettings(StrictModel):

    enabled: bool = True
    endpoint: HealthPath = "/health"
    # A dead engine is ejected within interval x failure_threshold (~2 s when its port refuses,
    # up to ~6 s when it hangs until timeout_secs) even with no traffic to trip the circuit
    # breaker; one GET per second per engine costs nothing next to inference. Measured in the
    # README (time to eject).
    interval_secs: PollSecs = 1.0
    timeout_secs: float = Field(default=2.0, gt=0)
    failure_threshold: int = Field(default=2, ge=1)
    success_threshold: int = Field(default=2, ge=1)
    # Probes in flight at once, per lane (answering, new, failing; picker.fleet.worker_http): a
    # refused probe costs ~0.2 ms of CPU and a live one ~0.1 ms of CPU and a few ms of wall
    # time, so 32 keeps thousands of workers at their interval (docs/benchmarks.md, health
    # checks at scale).
    max_concurrency: int = Field(default=32, ge=1)


@dataclass(slots=True)
class _Effective:
    endpoint: str
    interval: float
    timeout: float
    failures_to_eject: int
    successes_to_admit: int


def _effective(settings: HealthSettings, worker: Worker) -> _Effective | None:
    """Global settings with the worker's overrides applied; None when checks are off for it."""
    own = worker.spec.health
    disabled = own.disable if own.disable is not None else not settings.enabled
    if disabled:
        return None
    return _Effective(
        endpoint=own.endpoint or settings.endpoint,
        interval=own.interval_secs or settings.interval_secs,
        timeout=own.timeout_secs or settings.timeout_secs,
        failures_to_eject=own.failure_threshold or settings.failure_threshold,
        successes_to_admit=own.success_threshold or settings.success_threshold,
    )


class HealthChecker:
    """A probing task per worker (WorkerTasks); started and stopped explicitly, never in
    __init__ (no I/O in constructors)."""

    def __init__(self, workers: WorkerRegistry, settings: HealthSettings) -> None:
        self._workers = workers
        self._settings = settings
        self._loops = WorkerLoops(workers, self._check_forever, settings.max_concurrency)

    async def start(self) -> None:
        self._loops.start()

    async def stop(self) -> None:
        await self._loops.stop()

    async def _probe(self, worker: Worker, plan: _Effective) -> bool:
        """HTTP: the endpoint answers 2xx. gRPC: the engine's HealthCheck answers healthy
        (sglang_scheduler.proto:376-379), the endpoint setting aside."""
        if worker.spec.connection_mode is ConnectionMode.GRPC:
            try:
                return (await self._loops.engines.health(worker.spec, plan.timeout)).healthy
            except EngineCallFailed as exc:
                log.debug("worker %s: %s", worker.id, exc)
                return False
        response = await self._loops.requests.get(worker, plan.endpoint, plan.timeout)
        return response is not None and response.is_success

    async def _check_forever(self, worker: Worker) -> None:
        failures = successes = 0
        while True:
            # Re-read each round: PATCH /workers may change the worker's overrides.
            plan = _effective(self._settings, worker)
            if plan is None:
                await asyncio.sleep(self._settings.interval_secs)
                continue
            ok = await self._probe(worker, plan)
            self._workers.record_health_check(worker, time.monotonic())
            failures, successes = (0, successes + 1) if ok else (failures + 1, 0)
            if worker.healthy and failures >= plan.failures_to_eject:
                self._workers.set_healthy(worker, False)
                log.warning("worker %s unhealthy after %d failed checks", worker.id, failures)
            elif not worker.healthy and successes >= plan.successes_to_admit:
                self._workers.set_healthy(worker, True)
                log.warning("worker %s healthy again", worker.id)
            await asyncio.sleep(plan.interval)

