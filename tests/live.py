"""Workers with live state for policy and router tests, set the only way the product can:
through their registry's methods."""

from __future__ import annotations

from collections.abc import Iterable

from picker.fleet.engine_load import EngineLoad
from picker.fleet.registry import Worker, WorkerRegistry
from picker.fleet.worker_spec import WorkerSpec


class Fleet(list[Worker]):
    """Registered workers in order, with the registry that owns their state."""

    def __init__(self, specs: Iterable[WorkerSpec]) -> None:
        self.registry = WorkerRegistry(specs)
        super().__init__(self.registry.workers())

    def set_in_flight(self, worker: Worker, count: int) -> None:
        while worker.in_flight < count:
            self.registry.acquire(worker)
        while worker.in_flight > count:
            self.registry.release(worker)

    def set_engine(self, worker: Worker, load: EngineLoad | None) -> None:
        self.registry.set_engine_load(worker, load)
