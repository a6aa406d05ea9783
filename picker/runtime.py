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

In a multi-process picker (`serve --workers N`, picker.processes) each process runs a runtime
of its own: the primary runs everything, the others route on a mirror of its registry, and all
count in-flight requests in one shared table.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import enum
import json
import logging
import os
import random
import threading
import time
import uuid
from collections.abc import Collection, Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import uvicorn

from picker.admin.api import admin_tls, create_admin_app
from picker.admin.head_deadline import head_deadline_protocol
from picker.config import PickerConfig
from picker.errors import ConfigError, PrefillFailed, RequestError
from picker.fleet.config_follow import ConfigReloader
from picker.fleet.engine_scrape import LoadMonitor
from picker.fleet.health import HealthChecker
from picker.fleet.manager import WorkerManager
from picker.fleet.registry import Worker, WorkerRegistry
from picker.fleet.sources import Source, build_sources
from picker.listen import listen_socket
from picker.observe.decisions import DecisionLog
from picker.observe.metrics import PickerMetrics, ReplicaMetrics
from picker.observe.status import ActivityHistory
from picker.pd import (
    PREFILLER_HEADER,
    REQUEST_ID_HEADER,
    Forward,
    PdProtocol,
    PrefillClient,
    nixl_prefill_body,
    protocol_of,
    with_bootstrap,
    with_kv_transfer_params,
)
from picker.prefix.index import PrefixIndex
from picker.prefix.producer import PrefixProducer
from picker.processes.counts import SharedCounts
from picker.processes.group import ProcessGroup, check_group_config
from picker.routing.leases import Lease, LeaseBook
from picker.routing.request import RoutingRequest
from picker.routing.router import Router
from picker.routing.router_manager import PdRouters, RouterManager
from picker.trace import PredictionAudit, TraceRecorder

if TYPE_CHECKING:
    from picker.replicas.sharing import PickSharing
    from picker.replicas.wire import Pick

__all__ = ["Host", "PickerRuntime"]

log = logging.getLogger("llm_picker")

# How often leases whose end never arrived are looked for (limits.timeout_secs).
_EXPIRY_PERIOD_SECS = 1.0
# How long start() waits for the admin API to listen before calling it a failure.
_ADMIN_START_SECS = 10.0
# How long a follower process waits for the primary's first registry snapshot.
_MIRROR_START_SECS = 60.0


class Host(enum.Enum):
    """Who runs the picker; decides the defaults and what can be supported."""

    SERVE = "serve"  # `llm-picker serve`: Envoy's ext_proc; workers from config and the API
    LITELLM = "litellm"  # inside LiteLLM: workers are LiteLLM's deployments


class PickerRuntime:
    def __init__(self, config: PickerConfig, host: Host = Host.SERVE,
                 config_path: Path | None = None,
                 overrides: Mapping[str, Any] | None = None,
                 group: ProcessGroup | None = None) -> None:
        """Build everything, start nothing (no I/O): `start()` or `start_in_thread()` does.

        `config_path`: follow that file (SIGHUP or change) for its `workers:` list.
        `group`: this process's place in a multi-process picker."""
        if host is Host.LITELLM:
            _check_litellm_config(config)
        self._config = config
        self._host = host
        self._config_path = config_path
        self._overrides = dict(overrides or {})
        if group is not None:
            check_group_config(config)
            if config.trace is not None:
                raise ConfigError("trace", "serve --workers N would record N traces with N "
                                  "keys, none joinable with another: record with one process")
        self._group = group
        self._follower = group is not None and not group.primary
        self.registry = WorkerRegistry(circuit=config.circuit)
        self._counts: SharedCounts | None = None
        if group is not None:
            self._counts = SharedCounts(group.counts_path, group.count, group.index)
            self.registry.share_in_flight(self._counts)
        if not self._follower:  # followers get every worker, config's included, mirrored
            for spec in config.workers:
                self.registry.add(spec)
        self.metrics = PickerMetrics(self.registry,
                                     None if group is None else group.metrics_dir)
        self._sharing = self._pick_sharing(config)
        self._prefix = PrefixProducer(
            config.prefix, publish=None if self._sharing is None else self._sharing.publish,
        ) if config.prefix.enabled else None
        if self._prefix is not None:
            self.registry.add_listener(self._prefix)
            self.metrics.watch_prefix_index(self._prefix.index, self._prefix.calibration)
        decisions = DecisionLog(config.explain) if config.explain.enabled else None
        self.routers = RouterManager(self.registry, config, self.metrics, self._prefix,
                                     decisions)
        self.router = self.routers.default  # enable_igw off: the one router
        # What each request's end is compared with: the audit always, the recording if asked.
        self.audit = PredictionAudit(self.metrics.registry)
        self._recorder = TraceRecorder(config.trace) if config.trace is not None else None
        self.leases = LeaseBook(
            self.registry, config.limits if group is None else group.share_of(config.limits),
            self.metrics, (self.audit,) if self._recorder is None
            else (self.audit, self._recorder))
        self.history = ActivityHistory(self.metrics)  # the status page's plots
        # Workers registered before they answer are admitted by health checks, when they run.
        self.manager = WorkerManager(self.registry, config.discovery,
                                     health_checked=config.health.enabled,
                                     pd_paired=config.enable_igw,
                                     # Inside LiteLLM keys stay in the process; under
                                     # serve they go out on the ext_proc port.
                                     keys_refused=None if host is Host.LITELLM
                                     else config.extproc.worker_keys_problem())
        self._sources: list[Source] = build_sources(config.discovery, self.manager)
        if group is not None and self._follower:
            from picker.processes.mirror import StateFollower  # msgspec only when needed

            self._sources = [StateFollower(self.registry, group.feed_path)]
        # Prefill/decode pairs (enable_igw) may need the picker's own prefill request.
        self._awaits = (self._prefix is not None and self._prefix.remote is not None) \
            or self.leases.queueing or config.enable_igw
        self._prefill = PrefillClient(config.pd.prefill_timeout_secs, self._prefill_failed)
        self._rng = random.Random()  # SGLang bootstrap rooms
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
        """True when routing has an awaited step (remote tokenizer, admission queue, or a
        prefill/decode pair's prefill under enable_igw): then only `route` (or `route_sync`
        off the runtime's loop) can route. The ext_proc stream
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
        if _running_loop() is self._loop:
            raise RuntimeError("route_sync on the picker's own loop: await route()")
        future = asyncio.run_coroutine_threadsafe(self._route_awaited(request, allowed),
                                                  self._loop)
        return future.result()

    def _route_now(self, request: RoutingRequest, allowed: Collection[str] | None) -> Lease:
        self.leases.admit_now()
        return self._open(self.router, request, allowed)

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
        try:
            target = self.routers.select(request)
        except RequestError:
            self.leases.cancel_admission()
            raise
        if isinstance(target, PdRouters):
            return await self._open_pair(target, request, allowed)
        return self._open(target, request, allowed)

    def _open(self, router: Router, request: RoutingRequest,
              allowed: Collection[str] | None) -> Lease:
        """On an admission slot already taken: decide, then open the lease (or give the slot
        back if no worker fits)."""
        try:
            choice = router.choose(request, allowed)
        except RequestError:
            self.leases.cancel_admission()
            raise
        return self.leases.open(choice, request=request)

    async def _open_pair(self, routers: PdRouters, request: RoutingRequest,
                         allowed: Collection[str] | None) -> Lease:
        """Choose a prefill/decode pair, hold both, and run the pair's protocol step; a
        prefill that fails frees both and another pair is tried (pd.max_attempts)."""
        failed: set[str] = set()
        for attempt in range(self._config.pd.max_attempts):
            try:
                prefill_choice = routers.prefill.choose(request, self._excluding(allowed, failed))
                decode = routers.decode.choose(request, allowed)
            except RequestError:
                self.leases.cancel_admission()
                raise
            prefill = prefill_choice.worker
            if decode.decision is not None and prefill_choice.decision is not None:
                decode.decision.paired_with(prefill_choice.decision)
            lease = self.leases.open(decode, prefill, request)
            try:
                lease.forward_as(await self._pd_step(request, prefill, decode.worker))
                return lease
            except PrefillFailed:
                failed.add(prefill.id)
                lease.release("cancelled")  # the prefill's failure is already recorded
                if attempt + 1 == self._config.pd.max_attempts:
                    raise
                self.leases.admit_now()  # the next pair's slot
            except BaseException:
                # Cancelled (the client went away) or failed unexpectedly: nobody else holds
                # this lease, so it is released here or never.
                lease.release("cancelled")
                raise
        raise AssertionError("unreachable: pd.max_attempts >= 1")

    async def _pd_step(self, request: RoutingRequest, prefill: Worker,
                       decode: Worker) -> Forward:
        """Tell the pair about each other, as the decode worker's protocol says."""
        protocol = protocol_of(decode.spec)
        if protocol is PdProtocol.SIDECAR:
            return Forward(headers=((PREFILLER_HEADER, prefill.host_port),))
        data = request.body or {}
        path = request.api.value
        # One id on both legs: the client's (Envoy adds one when it sent none), else ours.
        sent = request.headers.get(REQUEST_ID_HEADER)
        request_id = sent or uuid.uuid4().hex
        headers = () if sent else ((REQUEST_ID_HEADER, request_id),)
        if protocol is PdProtocol.SGLANG:
            pair = with_bootstrap(data, prefill.spec, decode.spec, self._rng)
            await self._prefill.dispatch(prefill, path, pair.prefill, request_id)
            body = pair.decode
        else:
            params = await self._prefill.kv_transfer_params(
                prefill, path, nixl_prefill_body(data, request.api), request_id)
            if params is None:
                return Forward(headers=headers)
            body = with_kv_transfer_params(data, params)
        return Forward(body=json.dumps(body, ensure_ascii=False).encode(), headers=headers)

    def _prefill_failed(self, worker: Worker) -> None:
        self.registry.record_outcome(worker, False)
        self.metrics.prefill_failures.labels(worker.id).inc()

    def _excluding(self, allowed: Collection[str] | None,
                   failed: set[str]) -> Collection[str] | None:
        if not failed:
            return allowed
        ids = allowed if allowed is not None else [w.id for w in self.registry.workers()]
        return set(ids) - failed

    def _pick_sharing(self, config: PickerConfig) -> PickSharing | None:
        settings = config.replicas
        if self._group is not None and config.prefix.enabled \
                and config.prefix.index == "approximate":
            settings = self._group.pick_sharing()
        if settings is None:
            return None
        if os.environ.get("PYTHONHASHSEED", "random") == "random":
            raise ConfigError("replicas", "block hashes are Python's salted string hash: set "
                              "the same PYTHONHASHSEED (e.g. a random 32-bit number) in every "
                              "replica's environment")
        from picker.replicas.sharing import PickSharing  # msgspec only when configured

        return PickSharing(settings, config.prefix.block_size,
                           ReplicaMetrics(self.metrics.registry), self._apply_peer_pick)

    def _apply_peer_pick(self, pick: Pick) -> bool:
        worker = self.registry.get(pick.worker)
        if worker is None or self._prefix is None:
            return False
        self._prefix.apply(pick, worker)
        return True

    def prefix_index(self) -> PrefixIndex | None:
        """The prefix index routing reads (None when prefix.enabled is false)."""
        return None if self._prefix is None else self._prefix.index

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
    def ready(self) -> bool:
        """Readiness, for HTTP /ready and the gRPC `readiness` service alike: not draining,
        discovery synced once, and some worker routable."""
        return (not self._draining and self.discovery_synced
                and any(w.routable for w in self.registry.workers()))

    @property
    def discovery_synced(self) -> bool:
        """Every discovery source (Kubernetes, DNS) has applied its first view: until then
        readiness (HTTP /ready, gRPC health) says not ready, so no traffic meets a fleet that
        is still being found."""
        return all(source.synced for source in self._sources)

    @property
    def admin_port(self) -> int | None:
        """The admin API's bound port once it listens (None when disabled)."""
        return self._admin_port

    @property
    def admin_enabled(self) -> bool:
        # admin.enabled None (the default) means on for `serve`, off inside LiteLLM (binding a
        # port there must be asked for).
        if self._follower:
            return False  # one admin API for the whole picker: the primary's
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
            if not self._follower:  # the fleet's owner
                await self._start_fleet_services(running)
            if self._prefix is not None and config.prefix.index == "kv_events":
                from picker.prefix.kv_events import KvEventHub, KvEventMetrics

                hub = KvEventHub(self.registry, self._prefix.sync_index(),
                                 config.prefix.kv_events, KvEventMetrics(self.metrics.registry))
                await hub.start()
                running.push_async_callback(hub.stop)
            for source in self._sources:
                await source.start()
                running.push_async_callback(source.stop)
            if self._follower:
                await self._wait_for_fleet()
            if self._sharing is not None:
                await self._sharing.start()
                running.push_async_callback(self._sharing.stop)
            running.push_async_callback(self._prefill.close)
            if self._recorder is not None:
                running.callback(self._recorder.close)
            expiry = asyncio.create_task(self._expire_forever())
            running.push_async_callback(_cancel, expiry)
            if self.admin_enabled:
                sampler = asyncio.create_task(self.history.run())
                running.push_async_callback(_cancel, sampler)
                await self._start_admin(running)
            self._running = running.pop_all()
        log.info("llm-picker runtime started (%s): policy %s, %d workers", self._host.value,
                 config.policy.name, len(self.registry.workers()))
        if self._host is Host.SERVE and not self._follower and not config.workers \
                and not self._sources:
            where = (f"POST them to http://{config.admin.host}:{self.admin_port}/workers"
                     if self.admin_port is not None else "the admin API is off (admin.enabled), "
                     "so only a restart with workers or discovery configured adds them")
            log.warning("no workers: none in the configuration (workers:) and no discovery "
                        "source (discovery.kubernetes, discovery.dns); every request gets 503 "
                        "until workers are added: %s", where)

    async def start_unless(self, stop: asyncio.Event) -> bool:
        """`start()`, given up if `stop` is set first (SIGTERM while a follower still waits for
        process 0's fleet): False then, with nothing left running."""
        starting = asyncio.ensure_future(self.start())
        stopping = asyncio.ensure_future(stop.wait())
        done, _ = await asyncio.wait({starting, stopping},
                                     return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if starting in done:
            starting.result()  # what start() raised, if it did
            return True
        await _cancel(starting)
        return False

    async def _start_fleet_services(self, running: contextlib.AsyncExitStack) -> None:
        """What changes the fleet: health checks, engine scraping, the worker manager, config
        reload and, in a multi-process picker, the feed mirroring it all to the others."""
        config = self._config
        health = HealthChecker(self.registry, config.health)
        await health.start()
        running.push_async_callback(health.stop)
        await self.manager.start()
        running.push_async_callback(self.manager.stop)
        load = LoadMonitor(self.registry, config.load)
        await load.start()
        running.push_async_callback(load.stop)
        if self._config_path is not None:
            reloader = ConfigReloader(self._config_path, self._overrides, config,
                                      self.manager, self.metrics)
            await reloader.start()
            running.push_async_callback(reloader.stop)
        if self._group is not None:
            from picker.processes.mirror import StatePublisher

            publisher = StatePublisher(self.registry, self._group.feed_path)
            await publisher.start()
            running.push_async_callback(publisher.stop)

    async def _wait_for_fleet(self) -> None:
        """A follower starts serving only with the primary's fleet: before it, every request
        would be refused for want of workers (an Envoy without health checks on the picker
        sends traffic as soon as the port accepts)."""
        deadline = time.monotonic() + _MIRROR_START_SECS
        while not self.discovery_synced:
            if time.monotonic() > deadline:
                raise OSError(f"no registry from process 0 within {_MIRROR_START_SECS:.0f}s")
            await asyncio.sleep(0.01)

    async def stop(self, grace_secs: float = 0.0) -> None:
        """Drain (up to `grace_secs` for requests in flight), then stop every service."""
        self._draining = True
        if self.leases.active:
            log.info("draining: %d requests in flight, up to %.0fs", self.leases.active,
                     grace_secs)
        deadline = time.monotonic() + grace_secs
        while self.leases.active and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self.leases.active:
            log.warning("stopping with %d requests still in flight", self.leases.active)
        running, self._running = self._running, None
        if running is not None:
            await running.aclose()
            log.info("llm-picker runtime stopped (%s)", self._host.value)

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
            create_admin_app(self, admin.token, admin.read_token), host=admin.host,
            port=admin.port, log_level="warning", access_log=False, lifespan="off",
            http=head_deadline_protocol(admin.header_timeout_secs),
            timeout_keep_alive=admin.keep_alive_timeout_secs, **admin_tls(admin.tls)))
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
    for name in ("kubernetes", "dns"):
        if getattr(config.discovery, name) is not None:
            raise ConfigError(f"discovery.{name}", "inside LiteLLM the workers are LiteLLM's "
                              "deployments (model_list): discovery sources need `llm-picker "
                              "serve`")
    if config.enable_igw:
        raise ConfigError("enable_igw", "LiteLLM deployments are regular workers: "
                          "prefill/decode pairs and per-mode routers need `llm-picker serve` "
                          "behind Envoy")


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


async def _cancel(task: asyncio.Task[Any]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


class _AdminServer(uvicorn.Server):
    """uvicorn without its own signal handling: the host owns SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield
