"""WorkerRegistry: the registered workers, their indices and their live load.

Reads happen on every routed request and must not take a lock: lookups return tuples that are
rebuilt under the lock on each (rare) membership change and swapped in atomically. The registry
is the only writer of a worker's live state (in-flight, health, engine load, draining, circuit):
each change is a registry method taking the same lock, so asyncio handlers, the picker's own
background tasks and adapter threads (LiteLLM's sync selector) can share one registry, and a
reader of `Worker` sees read-only properties.

In a multi-process picker (`serve --workers N`, picker.processes) in-flight counts and prefill
backlogs also live in tables every process shares: a worker's `in_flight` and `prefill_ahead`
are then the whole picker's, while the registry still writes only this process's share.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from typing import Protocol, TypedDict

from picker.errors import UnknownWorker, WorkerConflict
from picker.fleet.circuit import CircuitBreaker, CircuitSettings
from picker.fleet.engine_load import EngineLoad
from picker.fleet.latency_fit import LatencyFit, features
from picker.fleet.speed import Observation, PrefillBacklog, SpeedModel
from picker.fleet.worker_spec import ConnectionMode, WorkerSpec, WorkerType
from picker.processes.backlog import SharedBacklog
from picker.processes.counts import SharedCounts
from picker.routing.response_stats import ResponseSample, ResponseStats

__all__ = ["RegistryListener", "RegistryStats", "Worker", "WorkerRegistry"]


class Worker:
    """A registered worker: its spec plus the live state policies read on every pick.

    Read-only to everyone but the registry, which owns every change (see the module doc)."""

    __slots__ = (
        "_spec", "id", "url", "_host_port", "_in_flight", "_healthy", "_draining", "_engine",
        "_circuit", "_last_health_check", "_speed", "_response", "_backlog", "_counts",
        "_column", "_latency", "_shared_backlog",
    )

    def __init__(self, spec: WorkerSpec, circuit: CircuitSettings | None = None,
                 counts: SharedCounts | None = None, column: int = 0,
                 backlog: SharedBacklog | None = None) -> None:
        self._spec = spec
        self.id: str = spec.id or spec.url
        self.url = spec.url
        self._host_port = spec.host_port
        self._in_flight = 0
        self._healthy = True
        self._draining = False
        self._engine: EngineLoad | None = None
        self._circuit = CircuitBreaker(circuit or CircuitSettings())
        self._last_health_check: float | None = None
        self._speed = SpeedModel()
        self._latency = LatencyFit()
        self._response = ResponseStats()
        self._backlog = PrefillBacklog()
        self._counts = counts
        self._column = column
        self._shared_backlog = backlog

    @property
    def spec(self) -> WorkerSpec:
        return self._spec

    @property
    def host_port(self) -> str:
        return self._host_port

    @property
    def in_flight(self) -> int:
        """Requests in flight on the worker: this process's, or with shared counts every
        process's."""
        counts = self._counts
        return self._in_flight if counts is None else counts.total(self._column)

    @property
    def column(self) -> int:
        """The worker's column in the shared in-flight table (0 without one)."""
        return self._column

    @property
    def healthy(self) -> bool:
        return self._healthy

    @property
    def draining(self) -> bool:
        return self._draining

    @property
    def engine(self) -> EngineLoad | None:
        """Latest engine load signals scraped from the worker (picker.fleet.engine_scrape), None
        until scraped."""
        return self._engine

    @property
    def latency(self) -> LatencyFit:
        """Time to first token as learned from this worker's answers (picker.fleet.latency_fit)."""
        return self._latency

    @property
    def speed(self) -> SpeedModel:
        """The engine's speed as learned from scrapes and finished requests (picker.fleet.speed)."""
        return self._speed

    def latency_features(self, uncached_tokens: float, now: float,
                         stale_after: float) -> tuple[float, ...]:
        """What the learned latency model reads for a request on this worker, now."""
        engine = self._engine
        return features(uncached_tokens, engine, self.prefill_ahead(now),
                        engine is not None and engine.fresh(now, stale_after))

    def prefill_ahead(self, now: float) -> float:
        """Uncached prompt tokens the picker has sent here and believes not yet prefilled at
        `now` (time.monotonic()): the queue a new request would wait behind (picker.fleet.speed)."""
        return self.backlog.left(self._speed.prefill_tokens_per_sec, now)

    @property
    def backlog(self) -> PrefillBacklog:
        """The prefill work sent here: this process's, or with a shared backlog every
        process's."""
        shared = self._shared_backlog
        return self._backlog if shared is None else shared.read(self._column)

    @property
    def circuit(self) -> CircuitBreaker:
        return self._circuit

    @property
    def last_health_check(self) -> float | None:
        """time.monotonic() of the last active health check, None before the first."""
        return self._last_health_check

    @property
    def response(self) -> ResponseStats:
        """Speed observed in the worker's own responses (picker.routing.response_stats); empty until
        an adapter that sees response bodies has finished one."""
        return self._response

    @property
    def routable(self) -> bool:
        return (self._healthy and not self._draining
                and self._circuit.allows(self._in_flight))

    def __repr__(self) -> str:
        return f"Worker({self.id!r}, {self.url!r}, in_flight={self.in_flight})"


class RegistryListener(Protocol):
    def worker_added(self, worker: Worker) -> None: ...

    def worker_removed(self, worker: Worker) -> None: ...


class RegistryStats(TypedDict):
    total_workers: int
    healthy_workers: int
    total_models: int
    total_load: int
    by_type: dict[str, int]


class WorkerRegistry:
    def __init__(
        self, specs: Iterable[WorkerSpec] = (), circuit: CircuitSettings | None = None
    ) -> None:
        self._circuit = circuit or CircuitSettings()
        self._listeners: list[RegistryListener] = []
        self._lock = threading.Lock()
        self._by_url: dict[str, Worker] = {}
        self._by_id: dict[str, Worker] = {}
        self._all: tuple[Worker, ...] = ()
        self._any_model: tuple[Worker, ...] = ()
        self._by_model: dict[str, tuple[Worker, ...]] = {}
        self._by_type: dict[WorkerType, tuple[Worker, ...]] = {}
        self._by_mode: dict[ConnectionMode, tuple[Worker, ...]] = {}
        self._counts: SharedCounts | None = None
        self._shared_backlog: SharedBacklog | None = None
        # Bumped by changes a mirror must follow (picker.processes.mirror): the fleet's
        # (membership, spec, health, draining) at once, engine scrapes on a slower beat.
        self._version = 0
        self._load_version = 0
        for spec in specs:
            self.add(spec)

    # -- membership -------------------------------------------------------------------------

    def add_listener(self, listener: RegistryListener) -> None:
        """Be told of every later add/remove (health checks, load scraping follow the fleet)."""
        self._listeners.append(listener)

    def share_in_flight(self, counts: SharedCounts, backlog: SharedBacklog) -> None:
        """Count in-flight requests in `counts` and prefill backlogs in `backlog`, shared with
        the picker's other processes; called before any worker is added."""
        if self._all:
            raise RuntimeError("share_in_flight before any worker is registered")
        self._counts = counts
        self._shared_backlog = backlog

    @property
    def version(self) -> int:
        """Grows with every change of membership, spec, health or draining."""
        return self._version

    @property
    def load_version(self) -> int:
        """Grows with every engine scrape."""
        return self._load_version

    def add(self, spec: WorkerSpec, column: int | None = None) -> Worker:
        """Register a worker. With shared counts, `column` is the worker's column as the
        primary process allocated it (None: allocate one here, the primary's own adds)."""
        worker_id = spec.id or spec.url
        with self._lock:
            if spec.url in self._by_url:
                raise WorkerConflict(f"worker {spec.url} is already registered")
            if worker_id in self._by_id:
                raise WorkerConflict(f"worker id {worker_id!r} is already registered")
            if column is None and self._counts is not None:
                column = self._counts.allocate()
            worker = Worker(spec, self._circuit, self._counts, column or 0,
                            self._shared_backlog)
            self._by_url[worker.url] = worker
            self._by_id[worker.id] = worker
            self._reindex()
        for listener in self._listeners:
            listener.worker_added(worker)
        return worker

    def remove(self, url: str) -> Worker:
        with self._lock:
            worker = self._by_url.pop(url, None)
            if worker is None:
                raise UnknownWorker(f"no worker with url {url}")
            del self._by_id[worker.id]
            if self._counts is not None and self._counts.allocates:
                self._counts.retire(worker.column)
            self._reindex()
        for listener in self._listeners:
            listener.worker_removed(worker)
        return worker

    def replace_spec(self, worker: Worker, spec: WorkerSpec) -> None:
        """Apply a changed spec (same url and id) so the next decision sees it."""
        if spec.url != worker.url or spec.id != worker.id:
            raise ValueError("url and id of a registered worker cannot change")
        with self._lock:
            worker._spec = spec
            worker._host_port = spec.host_port
            self._reindex()

    def _reindex(self) -> None:
        """Rebuild every lookup tuple; called with the lock held, O(workers x models)."""
        self._version += 1
        workers = tuple(self._by_url.values())
        any_model = tuple(w for w in workers if not w.spec.models)
        by_model: dict[str, list[Worker]] = {}
        for worker in workers:
            for model in worker.spec.models:
                by_model.setdefault(model, []).append(worker)
        self._all = workers
        self._any_model = any_model
        self._by_model = {model: tuple(ws) + any_model for model, ws in by_model.items()}
        self._by_type = {
            t: tuple(w for w in workers if w.spec.worker_type is t) for t in WorkerType
        }
        self._by_mode = {
            m: tuple(w for w in workers if w.spec.connection_mode is m) for m in ConnectionMode
        }

    # -- lookups (lock-free) ----------------------------------------------------------------

    def get(self, worker_id: str) -> Worker | None:
        return self._by_id.get(worker_id)

    def get_by_url(self, url: str) -> Worker | None:
        return self._by_url.get(url)

    def workers(self) -> tuple[Worker, ...]:
        return self._all

    def for_model(self, model: str) -> tuple[Worker, ...]:
        """Workers that serve `model`, healthy or not; workers listing no models serve any."""
        return self._by_model.get(model, self._any_model)

    def by_type(self, worker_type: WorkerType) -> tuple[Worker, ...]:
        return self._by_type.get(worker_type, ())

    def by_connection_mode(self, mode: ConnectionMode) -> tuple[Worker, ...]:
        return self._by_mode.get(mode, ())

    def models(self) -> frozenset[str]:
        return frozenset(self._by_model)

    def has_model(self, model: str) -> bool:
        """`model in models()` without building the set (once per decision)."""
        return model in self._by_model

    # -- live state -------------------------------------------------------------------------

    def acquire(self, worker: Worker) -> None:
        with self._lock:
            worker._in_flight += 1
            if worker._counts is not None:
                worker._counts.set_own(worker._column, worker._in_flight)

    def sent_prefill(self, worker: Worker, tokens: float) -> None:
        """A request was routed to `worker` with `tokens` of prompt it is believed not to hold
        (`Worker.prefill_ahead`)."""
        now = time.monotonic()
        with self._lock:
            self._set_backlog(worker, worker.backlog.plus(
                tokens, worker._speed.prefill_tokens_per_sec, now), max(0.0, tokens))

    def peer_sent_prefill(self, worker: Worker, tokens: float) -> None:
        """A peer replica routed a request to `worker` with `tokens` of prompt it is believed
        not to hold; its end is never seen here (PrefillBacklog.peer_sent)."""
        now = time.monotonic()
        with self._lock:
            self._set_backlog(worker, worker.backlog.peer_sent(
                tokens, worker._speed.prefill_tokens_per_sec, now), 0.0)

    def ended_prefill(self, worker: Worker, tokens: float) -> None:
        """A request given to `sent_prefill` with `tokens` has ended: its prompt is no longer
        ahead of anything (picker.fleet.speed.PrefillBacklog.ended)."""
        now = time.monotonic()
        with self._lock:
            self._set_backlog(worker, worker.backlog.ended(
                tokens, worker._speed.prefill_tokens_per_sec, now), -max(0.0, tokens))

    def _set_backlog(self, worker: Worker, backlog: PrefillBacklog, open_change: float) -> None:
        """Called with the lock held: `open_change` is this process's own open tokens' change."""
        shared = worker._shared_backlog
        if shared is None:
            worker._backlog = backlog
        else:
            shared.write(worker._column, backlog, open_change)

    def release(self, worker: Worker) -> None:
        with self._lock:
            worker._in_flight -= 1
            if worker._counts is not None:
                worker._counts.set_own(worker._column, worker._in_flight)

    def set_healthy(self, worker: Worker, healthy: bool) -> None:
        with self._lock:
            if worker._healthy != healthy:
                worker._healthy = healthy
                self._version += 1

    def record_health_check(self, worker: Worker, at: float) -> None:
        with self._lock:
            worker._last_health_check = at

    def set_engine_load(self, worker: Worker, load: EngineLoad | None) -> None:
        """A new scrape; the counters' growth since the previous one teaches the worker's
        speed."""
        with self._lock:
            if load is not None:
                worker._speed = worker._speed.scraped(worker._engine, load)
            worker._engine = load
            self._load_version += 1

    def learn_latency(self, worker: Worker, x: tuple[float, ...], ttft_secs: float) -> None:
        """One observed first token, with the features its request was decided on."""
        with self._lock:
            worker._latency = worker._latency.learned(x, ttft_secs)

    def observe(self, worker: Worker, observation: Observation) -> None:
        """A finished request's timing and usage, as a proxy saw it: the one entry point every
        adapter's response path feeds (Envoy's response stream, LiteLLM's success callback)."""
        with self._lock:
            worker._speed = worker._speed.observe(observation)

    def set_draining(self, worker: Worker) -> None:
        """No new requests; in-flight ones finish. There is no way back: a drained worker is
        removed, and one that returns is registered anew."""
        with self._lock:
            worker._draining = True
            self._version += 1

    def record_outcome(self, worker: Worker, success: bool) -> None:
        """A finished request's verdict for the worker's circuit breaker (it locks itself)."""
        worker._circuit.record(success)

    def record_response(self, worker: Worker, sample: ResponseSample) -> None:
        """Fold a response the proxy passed through into the worker's observed stats, and
        teach its speed model (`observe`) what it shows."""
        with self._lock:
            worker._response = worker._response.updated(sample)
        self.observe(worker, sample.observation())

    def stats(self) -> RegistryStats:
        workers = self._all
        by_type = {t.value: 0 for t in WorkerType}
        for worker in workers:
            by_type[worker.spec.worker_type.value] += 1
        return {
            "total_workers": len(workers),
            "healthy_workers": sum(1 for w in workers if w.healthy),
            "total_models": len(self._by_model),
            "total_load": sum(w.in_flight for w in workers),
            "by_type": by_type,
        }
