"""WorkerManager: the runtime changes to the fleet (register, patch, drain), one place for all.

The admin API and configuration reload both call it, so a worker added either way goes
through the same discovery, the same conflict checks and the same drain.
"""

from __future__ import annotations

import asyncio
import time

import httpx
from pydantic import BaseModel, ConfigDict, Field

from picker.discovery import DiscoverySettings, discover, expand_dp_ranks
from picker.errors import UnknownWorker, WorkerConflict
from picker.registry import Worker, WorkerRegistry
from picker.workers import U32, HealthOverrides, WorkerSpec

__all__ = ["WorkerManager", "WorkerPatch"]


class WorkerPatch(BaseModel):
    """What may change on a registered worker without re-registering it."""

    model_config = ConfigDict(extra="forbid")

    priority: U32 | None = None
    cost: float | None = Field(default=None, gt=0)
    labels: dict[str, str] | None = None
    health: HealthOverrides | None = None


class WorkerManager:
    def __init__(self, workers: WorkerRegistry, settings: DiscoverySettings) -> None:
        self.workers = workers
        self._settings = settings
        self._client: httpx.AsyncClient | None = None

    async def start(self) -> None:
        self._client = httpx.AsyncClient()

    async def stop(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    def find(self, key: str) -> Worker:
        """A worker by url (as registered, or in any form WorkerSpec normalises) or by id."""
        worker = self.workers.get_by_url(key) or self.workers.get(key)
        if worker is None:
            try:
                worker = self.workers.get_by_url(WorkerSpec(url=key).url)
            except ValueError:
                worker = None
        if worker is None:
            raise UnknownWorker(f"no worker with url or id {key[:200]!r}")
        return worker

    async def register(self, spec: WorkerSpec) -> list[Worker]:
        """Connect, discover what the spec leaves out, register (one worker per DP rank)."""
        if self.workers.get_by_url(spec.url) or any(
            w.spec.dp_base_url == spec.url for w in self.workers.workers()
        ):
            raise WorkerConflict(f"worker {spec.url} is already registered")
        assert self._client is not None, "WorkerManager.start() was not awaited"
        complete = await discover(spec, self._client, self._settings)
        added: list[Worker] = []
        try:
            for rank_spec in expand_dp_ranks(complete):
                added.append(self.workers.add(rank_spec))
        except WorkerConflict:
            for worker in added:  # all ranks or none
                self.workers.remove(worker.url)
            raise
        return added

    def patch(self, worker: Worker, patch: WorkerPatch) -> Worker:
        changes = patch.model_dump(exclude_unset=True)
        if "health" in changes and changes["health"] is not None:
            changes["health"] = {**worker.spec.health.model_dump(exclude_unset=True),
                                 **changes["health"]}
        self.workers.replace_spec(worker, worker.spec.updated(**changes))
        return worker

    async def drain(self, worker: Worker, timeout_secs: float) -> bool:
        """Stop new requests, wait for in-flight ones (bounded), then remove.

        Returns whether the worker went idle in time; it is removed either way, and requests
        still running finish normally (their slots are released on the removed record).
        """
        self.workers.set_draining(worker)
        deadline = time.monotonic() + timeout_secs
        while worker.in_flight > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        drained = worker.in_flight == 0
        if self.workers.get_by_url(worker.url) is worker:
            self.workers.remove(worker.url)
        return drained
