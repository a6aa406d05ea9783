"""PickerRuntime: one running picker, whichever host it serves.

`llm-picker serve` (Envoy), the LiteLLM Router strategy and the LiteLLM proxy callback each build
a PickerRuntime from a PickerConfig and differ only in their adapter. The runtime owns the
lifecycle of everything a running picker has - registry, decision, lease book, health checks,
engine-metrics scraping, the worker manager (discovery), KV-event subscribers, config
follow/reload, lease expiry and the admin API - and offers adapters one entry point:

    lease = await runtime.route(request)      # or runtime.route_sync(request) from a thread
    ...                                       # forward the request to lease.worker
    lease.release("completed")                # once; later calls do nothing

`route` includes the awaited steps a configuration may need (remote tokenizer, admission queue);
the background services run on one event loop: the host's (`await start()`) or a thread of the
runtime's own (`start_in_thread()`, for LiteLLM, whose callers may be sync or on other loops).
What a host cannot support is a ConfigError at construction, naming the key.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import enum
import logging
import threading
import time
from collections.abc import Collection, Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import uvicorn

from picker.admin import admin_tls, create_admin_app
from picker.config import PickerConfig
from picker.errors import ConfigError, RequestError
from picker.fleet import WorkerManager
from picker.health import HealthChecker
from picker.leases import Lease, LeaseBook
from picker.listen import listen_socket
from picker.load import LoadMonitor
from picker.prefix.producer import PrefixProducer
from picker.registry import WorkerRegistry
from picker.reload import ConfigReloader
from picker.request import RoutingRequest
from picker.router import Router
from picker.telemetry import PickerMetrics

__all__ = ["Host", "PickerRuntime"]

log = logging.getLogger("llm_picker")

# How often leases whose end never arrived are looked for (limits.timeout_secs).
_EXPIRY_PERIOD_SECS = 1.0
# How long start() waits for the admin API to listen before calling it a failure.
_ADMIN_START_SECS = 10.0


class Host(enum.Enum):
    """Who runs the picker; decides the defaults and what can be supported."""

    SERVE = "serve"  # `llm-picker serve`: Envoy's ext_proc; workers from config and the API
    LITELLM = "litellm"  # inside LiteLLM: workers are LiteLLM's deployments


class PickerRuntime:
    def __init__(self, config: PickerConfig, host: Host = Host.SERVE,
                 config_path: Path | None = None,
                 overrides: Mapping[str, Any] | None = None) -> None:
        """Build everything, start nothing (no I/O): `start()` or `start_in_thread()` does.

        `config_path`: follow that file (SIGHUP or change) for its `workers:` list."""
        if host is Host.LITELLM:
            _check_litellm_config(config)
        self._config = config
        self._host = host
        self._config_path = config_path
        self._overrides = dict(overrides or {})
        self.registry = WorkerRegistry(config.workers, config.circuit)
        self.metrics = PickerMetrics(self.registry)
        self._prefix = PrefixProducer(config.prefix) if config.prefix.enabled else None
        if self._prefix is not None:
            self.registry.add_listener(self._prefix)
            self.metrics.watch_prefix_index(self._prefix.index, self._prefix.calibration)
        self.router = Router(self.registry, config.policy.name, config.policy_params(),
                             self.metrics, self._prefix, config.limits,
                             config.load.stale_after_secs)
        self.leases = LeaseBook(self.registry, config.limits, self.metrics)
        # Workers registered before they answer are admitted by health checks, when they run.
        self.manager = WorkerManager(self.registry, config.discovery,
                                     health_checked=config.health.enabled)
        self._awaits = (self._prefix is not None and self._prefix.remote is not None) \
            or self.leases.queueing
        self._draining = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._running: contextlib.AsyncExitStack | None = None
        self._admin_port: int | None = None

    @property
    def config(self) -> PickerConfig:
        return self._config

    # -- routing ------------------------------------------------------------------------------

    @property
    def awaits(self) -> bool:
        """True when routing has an awaited step (remote tokenizer, admission queue): then
        only `route` (or `route_sync` off the runtime's loop) can route. The ext_proc stream
        answers in the same call when this is False."""
        return self._awaits

    async def route(self, request: RoutingRequest,
                    allowed: Collection[str] | None = None) -> Lease:
        """Choose a worker and open a lease on it; raises RequestError if none fits.

        `allowed` (worker ids) narrows the candidates, e.g. to the deployments LiteLLM has not
        cooled down. The awaited steps run on the runtime's loop, wherever the caller is."""
        if not self._awaits:
            return self._route_now(request, allowed)
        if self._loop is None or asyncio.get_running_loop() is self._loop:
            return await self._route_awaited(request, allowed)
        future = asyncio.run_coroutine_threadsafe(self._route_awaited(request, allowed),
                                                  self._loop)
        return await asyncio.wrap_future(future)

    def route_sync(self, request: RoutingRequest,
                   allowed: Collection[str] | None = None) -> Lease:
        """`route` for synchronous callers (LiteLLM's `completion()`); never call it on the
        runtime's own loop when `awaits` is True (it would block the loop it waits for)."""
        if not self._awaits:
            return self._route_now(request, allowed)
        if self._loop is None or not self._loop.is_running():
            raise RuntimeError("the picker runtime is not running: start it first")
        with contextlib.suppress(RuntimeError):
            if asyncio.get_running_loop() is self._loop:
                raise RuntimeError("route_sync on the picker's own loop: await route()")
        future = asyncio.run_coroutine_threadsafe(self._route_awaited(request, allowed),
                                                  self._loop)
        return future.result()

    def _route_now(self, request: RoutingRequest, allowed: Collection[str] | None) -> Lease:
        self.leases.admit_now()
        return self._open(request, allowed)

    async def _route_awaited(self, request: RoutingRequest,
                             allowed: Collection[str] | None) -> Lease:
        remote = self._prefix.remote if self._prefix is not None else None
        if remote is not None:
            tokens = await remote.tokens(request)
            if tokens is None:
                self.metrics.tokenizer_fallbacks.inc()
            else:
                request = replace(request, tokens=tokens)
        await self.leases.admit()
        return self._open(request, allowed)

    def _open(self, request: RoutingRequest, allowed: Collection[str] | None) -> Lease:
        """On an admission slot already taken: decide, then open the lease (or give the slot
        back if no worker fits)."""
        try:
            worker = self.router.choose(request, allowed)
        except RequestError:
            self.leases.cancel_admission()
            raise
        return self.leases.open(worker)

    def reject(self, error: RequestError) -> None:
        """Count a refused request; adapters call it where they turn the error into a reply
        (route's own errors included)."""
        self.metrics.requests.labels("rejected").inc()
        self.metrics.rejections.labels(error.code).inc()

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def draining(self) -> bool:
        """Shutting down: /ready says so, so load balancers stop sending new traffic."""
        return self._draining

    @property
    def admin_port(self) -> int | None:
        """The admin API's bound port once it listens (None when disabled)."""
        return self._admin_port

    @property
    def admin_enabled(self) -> bool:
        # admin.enabled None (the default) means on for `serve`, off inside LiteLLM (binding a
        # port there must be asked for).
        enabled = self._config.admin.enabled
        return enabled if enabled is not None else self._host is Host.SERVE

    async def start(self) -> None:
        """Start every background service on the running loop; raises OSError if the admin
        API cannot listen (everything started is stopped again)."""
        if self._running is not None:
            raise RuntimeError("the picker runtime is already running")
        self._loop = asyncio.get_running_loop()
        config = self._config
        async with contextlib.AsyncExitStack() as running:
            health = HealthChecker(self.registry, config.health)
            await health.start()
            running.push_async_callback(health.stop)
            await self.manager.start()
            running.push_async_callback(self.manager.stop)
            load = LoadMonitor(self.registry, config.load)
            await load.start()
            running.push_async_callback(load.stop)
            if self._prefix is not None and config.prefix.index == "kv_events":
                from picker.prefix.kv_events import KvEventHub, KvEventMetrics

                hub = KvEventHub(self.registry, self._prefix.sync_index(),
                                 config.prefix.kv_events, KvEventMetrics(self.metrics.registry))
                await hub.start()
                running.push_async_callback(hub.stop)
            if self._config_path is not None:
                reloader = ConfigReloader(self._config_path, self._overrides, config,
                                          self.manager, self.metrics)
                await reloader.start()
                running.push_async_callback(reloader.stop)
            expiry = asyncio.create_task(self._expire_forever())
            running.push_async_callback(_cancel, expiry)
            if self.admin_enabled:
                await self._start_admin(running)
            self._running = running.pop_all()
        log.info("llm-picker runtime started (%s): policy %s, %d workers", self._host.value,
                 config.policy.name, len(self.registry.workers()))

    async def stop(self, grace_secs: float = 0.0) -> None:
        """Drain (up to `grace_secs` for requests in flight), then stop every service."""
        self._draining = True
        deadline = time.monotonic() + grace_secs
        while self.leases.active and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        running, self._running = self._running, None
        if running is not None:
            await running.aclose()

    def start_in_thread(self) -> None:
        """Run the runtime on a daemon thread with its own loop (hosts whose callers are sync
        or on loops that come and go); returns once started, raising what start() raised."""
        started: concurrent.futures.Future[None] = concurrent.futures.Future()
        loop = asyncio.new_event_loop()

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.start())
            except BaseException as exc:  # noqa: BLE001 - handed to the starting thread
                started.set_exception(exc)
                loop.close()
                return
            started.set_result(None)
            loop.run_forever()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        self._thread = threading.Thread(target=run, name="llm-picker", daemon=True)
        self._thread.start()
        started.result()

    def stop_thread(self, grace_secs: float = 0.0) -> None:
        """Stop a runtime started with start_in_thread (idempotent)."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None or loop.is_closed():
            return
        asyncio.run_coroutine_threadsafe(self.stop(grace_secs), loop).result()
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        self._thread = None

    async def _start_admin(self, running: contextlib.AsyncExitStack) -> None:
        admin = self._config.admin
        # Bound first: a busy port is one line naming it, never a traceback after "serving".
        sock = listen_socket(admin.host, admin.port, "the admin API")
        self._admin_port = sock.getsockname()[1]
        server = _AdminServer(uvicorn.Config(
            create_admin_app(self, admin.token), host=admin.host, port=admin.port,
            log_level="warning", access_log=False, lifespan="off", **admin_tls(admin.tls)))
        task = asyncio.create_task(server.serve([sock]))
        deadline = time.monotonic() + _ADMIN_START_SECS
        while not server.started and not task.done() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        if not server.started:
            server.should_exit = True
            await _cancel(task)
            sock.close()
            raise OSError(f"the admin API did not start on {admin.host}:{admin.port}")

        async def stop_admin() -> None:
            server.should_exit = True
            await asyncio.wait({task}, timeout=5)
            await _cancel(task)
            sock.close()

        running.push_async_callback(stop_admin)

    async def _expire_forever(self) -> None:
        while True:
            await asyncio.sleep(_EXPIRY_PERIOD_SECS)
            expired = self.leases.expire()
            if expired:
                log.warning("released %d requests older than %.0fs", expired,
                            self._config.limits.timeout_secs)


def _check_litellm_config(config: PickerConfig) -> None:
    """What LiteLLM mode cannot do, refused at start-up naming the key."""
    if config.workers:
        raise ConfigError("workers", "inside LiteLLM the workers are LiteLLM's deployments "
                          "(model_list); remove workers: from the picker configuration")
    if config.prefix.enabled and config.prefix.index == "kv_events":
        raise ConfigError("prefix.index", "kv_events needs workers declaring kv_events "
                          "endpoints, which LiteLLM deployments cannot: use approximate")


async def _cancel(task: asyncio.Task[Any]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


class _AdminServer(uvicorn.Server):
    """uvicorn without its own signal handling: the host owns SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield
