"""WorkerTasks: one asyncio task per registered worker, following the registry; WorkerLoops:
such a task per worker with the channels it talks to its worker through.

Health checks, metrics scraping and KV-event subscriptions all need "a loop per worker, started
when it is added and cancelled when it goes"; this is that, once. Health checks and scraping
also share how they reach a worker - bounded HTTP GETs (picker.fleet.worker_http) or the
engine's gRPC service (picker.fleet.grpc_calls) - and both must let a worker's connections go
when its loop ends, however it ended: WorkerLoops is that, once.
Registry changes may come from any thread (the admin API, config reload, LiteLLM's threads);
tasks always live on the loop that started them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from picker.fleet.grpc_calls import EngineCalls
from picker.fleet.registry import Worker, WorkerRegistry
from picker.fleet.worker_http import WorkerRequests

__all__ = ["WorkerLoops", "WorkerTasks"]


class WorkerTasks:
    def __init__(self, workers: WorkerRegistry,
                 run: Callable[[Worker], Coroutine[Any, Any, None]]) -> None:
        self._workers = workers
        self._run = run
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        """On the running loop: a task for every worker now, and for every one added later."""
        self._loop = asyncio.get_running_loop()
        self._workers.add_listener(self)
        for worker in self._workers.workers():
            self._begin(worker)

    async def stop(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        self._tasks.clear()

    # RegistryListener
    def worker_added(self, worker: Worker) -> None:
        self._on_loop(self._begin, worker)

    def worker_removed(self, worker: Worker) -> None:
        self._on_loop(self._end, worker)

    def _on_loop(self, action: Callable[[Worker], None], worker: Worker) -> None:
        if self._loop is None or self._loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            action(worker)
        else:
            self._loop.call_soon_threadsafe(action, worker)

    def _begin(self, worker: Worker) -> None:
        if worker.url not in self._tasks:
            self._tasks[worker.url] = asyncio.create_task(self._run(worker))

    def _end(self, worker: Worker) -> None:
        task = self._tasks.pop(worker.url, None)
        if task is not None:
            task.cancel()


class WorkerLoops:
    def __init__(self, workers: WorkerRegistry,
                 loop: Callable[[Worker], Coroutine[Any, Any, None]],
                 max_concurrency: int) -> None:
        """`loop`: what runs for each worker; it reaches the worker through `requests` (HTTP)
        or `engines` (gRPC)."""
        self._loop = loop
        self.requests = WorkerRequests(max_concurrency)
        self.engines = EngineCalls()
        self._tasks = WorkerTasks(workers, self._run)

    def start(self) -> None:
        self.requests.start()
        self._tasks.start()

    async def stop(self) -> None:
        await self._tasks.stop()
        await self.requests.stop()
        await self.engines.close()

    async def _run(self, worker: Worker) -> None:
        try:
            await self._loop(worker)
        finally:
            self.requests.forget(worker)
            self.engines.forget(worker.spec)
