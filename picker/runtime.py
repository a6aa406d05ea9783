"""PickerRuntime: one running picker's lifecycle, whichever host it serves.

`llm-picker serve` (Envoy), the LiteLLM Router strategy and the LiteLLM proxy callback each build
a PickerRuntime from a PickerConfig and differ only in their adapter. The runtime builds the
parts a running picker has - registry, routers, lease book, health checks, engine-metrics
scraping, the worker manager and its discovery sources, KV-event subscribers, config follow,
replica links, lease expiry and the admin API - starts them, and stops them. Adapters get one
thing from it, `routing` (picker.routing.contract.Picker):

    lease = await runtime.routing.route(request)   # or route_sync(request) from a thread
    ...                                            # forward the request: lease.headers
    lease.release(Outcome.COMPLETED)               # once; later calls do nothing

The background services run on one event loop: the host's (`await start()`) or a thread of
the runtime's own (`start_in_thread()`, for LiteLLM, whose callers may be sync or on other
loops). What a host cannot support is a ConfigError at construction, naming the key.

In a multi-process picker (`serve --workers N`, picker.processes) each process runs a runtime
of its own: the primary runs everything, the others route on a mirror of its registry, and all
count in-flight requests in one shared table.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import enum
import logging
import os
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from picker.admin.api import create_admin_app
from picker.admin.server import serve_admin
from picker.config import PickerConfig, load_config
from picker.errors import ConfigError, extra_needed
from picker.fleet.api_state import StateFile
from picker.fleet.config_follow import ConfigReloader
from picker.fleet.engine_scrape import LoadMonitor
from picker.fleet.health import HealthChecker
from picker.fleet.lora_loading import AdapterLoader
from picker.fleet.manager import WorkerManager
from picker.fleet.registry import WorkerRegistry
from picker.fleet.sources import OwnedSource, Source, build_sources
from picker.observe.decisions import DecisionLog
from picker.observe.flow_metrics import FlowMetrics
from picker.observe.metrics import PickerMetrics, ReplicaMetrics
from picker.observe.status import ActivityHistory
from picker.pd.pairing import PairStep
from picker.prefix.index import PrefixIndex
from picker.prefix.producer import PrefixProducer
from picker.processes.backlog import SharedBacklog
from picker.processes.counts import SharedCounts
from picker.processes.flow_snapshots import PUBLISH_SECS, FlowSnapshots
from picker.processes.group import ProcessGroup, check_group_config
from picker.replicas.joining import join_replicas
from picker.routing.flow import (
    FlowControl,
    FlowController,
    FlowStats,
    Objectives,
    SaturationDetector,
)
from picker.routing.flow.quota_table import QuotaTable
from picker.routing.leases import LeaseBook
from picker.routing.model_rewrite import ModelRewriter
from picker.routing.router_manager import RouterManager
from picker.routing_service import RoutingService
from picker.trace.audit import PredictionAudit
from picker.trace.latency_learner import LatencyLearner
from picker.trace.recorder import TraceRecorder

if TYPE_CHECKING:
    from picker.observe.tracing import DecisionTracer

__all__ = ["Host", "PickerRuntime"]

log = logging.getLogger("llm_picker")

# How often leases whose end never arrived are looked for (limits.timeout_secs).
_EXPIRY_PERIOD_SECS = 1.0
# How often flow control looks for room that appeared without a request ending.
_FLOW_TICK_SECS = 0.05
# On SIGTERM after the shutdown delay: no request for this long means the balancers stopped
# sending here (with Envoy's checks every 0.25-1 s, several intervals of a busy stream).
_QUIET_SECS = 0.3
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
                 group: ProcessGroup | None = None,
                 deployments: OwnedSource | None = None) -> None:
        """Build everything, start nothing (no I/O): `start()` or `start_in_thread()` does.

        `config_path`: follow that file (SIGHUP or change) for its `workers:` list.
        `group`: this process's place in a multi-process picker. `deployments`: the host's
        own list of workers (LiteLLM's), a source given the worker manager to write through."""
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
            self.registry.share_in_flight(self._counts, SharedBacklog(
                group.backlog_path, group.count, group.index))
        self.metrics = PickerMetrics(self.registry,
                                     None if group is None else group.metrics_dir)
        self._prefix = PrefixProducer(config.prefix) if config.prefix.enabled else None
        if self._prefix is not None:
            self.registry.add_listener(self._prefix)
            self.metrics.watch_prefix_index(self._prefix.index, self._prefix.calibration)
        sharing = config.replicas if group is None else group.pick_sharing_for(config)
        self._sharing = None if sharing is None else join_replicas(
            sharing, config.prefix.block_size, self.registry, self._prefix,
            ReplicaMetrics(self.metrics.registry), loads=group is None)
        self.decisions = DecisionLog(config.explain) if config.explain.enabled else None
        self.routers = RouterManager(self.registry, config, self.metrics, self._prefix,
                                     self.decisions)
        # What each request's end is compared with: the audit always, the recording if asked;
        # all read the one prediction the lease book takes at the decision.
        self.audit = PredictionAudit(self.metrics.registry)
        learner = LatencyLearner(self.registry)
        self._recorder = TraceRecorder(config.trace) if config.trace is not None else None
        self.leases = LeaseBook(
            self.registry, config.limits if group is None else group.share_of(config.limits),
            self.metrics, (self.audit, learner) if self._recorder is None
            else (self.audit, learner, self._recorder), config.load.stale_after_secs)
        self.history = ActivityHistory(self.metrics)  # the status page's plots
        # Workers registered before they answer are admitted by health checks, when they run.
        self.manager = WorkerManager(self.registry, config.discovery,
                                     health_checked=config.health.enabled,
                                     pd_paired=config.enable_igw,
                                     # Inside LiteLLM keys stay in the process; under
                                     # serve they go out on the ext_proc port.
                                     keys_refused=None if host is Host.LITELLM
                                     else config.extproc.worker_keys_problem(),
                                     state=None if config.admin.state_file is None
                                     else StateFile(config.admin.state_file))
        if not self._follower:  # followers get every worker, config's included, mirrored
            self.manager.adopt(None, config.workers)
        # InferenceObjective priorities: the configuration's, and the cluster's when
        # Kubernetes discovery follows them (flow control on).
        objectives = Objectives(config.flow.objectives)
        self._sources: list[Source] = build_sources(
            config.discovery, self.manager, objectives if config.flow.enabled else None)
        if deployments is not None:
            deployments.attach(self.manager)
            self._sources.append(deployments)
        if group is not None and self._follower:
            from picker.processes.mirror import StateFollower  # msgspec only when needed

            self._sources = [StateFollower(self.registry, group.feed_path)]
        self._pairs = PairStep(self.registry, self.metrics, config.pd.prefill_timeout_secs)
        rewriter = ModelRewriter(config.model_rewrites, count=self.metrics.rewrite_decided)
        flow = config.flow if group is None else group.share_of_flow(config.flow)
        self.flow = FlowController(
            flow, SaturationDetector(self.registry, flow.saturation),
            self.leases.limit or 0, FlowMetrics(self.metrics.registry),
            quota_table=None if group is None
            else QuotaTable(group.quotas_path, group.count, group.index)) \
            if flow.enabled else None
        # Under --workers only process 0 serves the status page: the others publish their
        # queues for it.
        self._flow_snapshots = None if group is None or self.flow is None \
            else FlowSnapshots(group)
        self.routing = RoutingService(self.registry, self.routers, self.leases, self.metrics,
                                      self._prefix, self._pairs, config.explain,
                                      config.pd.max_attempts, pd_paired=config.enable_igw,
                                      tracer=_decision_tracer(config),
                                      adapters=AdapterLoader(self.registry, config.lora,
                                                             self.manager.served_adapter),
                                      rewriter=rewriter,
                                      flow=None if self.flow is None
                                      else FlowControl(flow, objectives, self.flow),
                                      decisions=self.decisions)
        self._draining = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._running: contextlib.AsyncExitStack | None = None
        self._admin_port: int | None = None

    @property
    def config(self) -> PickerConfig:
        return self._config

    def flow_stats(self) -> FlowStats | None:
        """Flow control's queues, every process's under `serve --workers`; None when off."""
        if self.flow is None:
            return None
        own = self.flow.stats()
        return own if self._flow_snapshots is None else self._flow_snapshots.merged(own)

    def prefix_index(self) -> PrefixIndex | None:
        """The prefix index routing reads (None when prefix.enabled is false)."""
        return None if self._prefix is None else self._prefix.index

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
        self.routing.attach(self._loop)
        config = self._config
        async with contextlib.AsyncExitStack() as running:
            if not self._follower:  # the fleet's owner
                await self._start_fleet_services(running)
            if self._prefix is not None and config.prefix.index == "kv_events":
                from picker.prefix.kv_apply import KvEventMetrics
                from picker.prefix.kv_events import KvEventHub

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
            running.push_async_callback(self._pairs.close)
            if self._recorder is not None:
                running.callback(self._recorder.close)
            if self.flow is not None:
                ticks = asyncio.create_task(_tick_forever(self.flow))
                running.push_async_callback(_cancel, ticks)
                if self._follower and self._flow_snapshots is not None:
                    publish = asyncio.create_task(
                        _publish_forever(self.flow, self._flow_snapshots))
                    running.push_async_callback(_cancel, publish)
            expiry = asyncio.create_task(self._expire_forever())
            running.push_async_callback(_cancel, expiry)
            if self.admin_enabled:
                sampler = asyncio.create_task(self.history.run())
                running.push_async_callback(_cancel, sampler)
                admin = config.admin
                app = create_admin_app(self, admin.token, admin.read_token)
                self._admin_port = await serve_admin(app, admin, running)
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
        self.manager.complete_adopted(config.workers)
        load = LoadMonitor(self.registry, config.load)
        await load.start()
        running.push_async_callback(load.stop)
        if self._config_path is not None:
            reloader = ConfigReloader(self._config_path, self._overrides, config,
                                      self.manager, self.metrics)
            await reloader.start()
            running.push_async_callback(reloader.stop)
        await self.manager.restore()  # after the configuration's workers: they take precedence
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

    async def stop(self, grace_secs: float = 0.0, delay_secs: float = 0.0) -> None:
        """Not ready at once; route new requests for `delay_secs` more (balancers take that
        long to stop sending them), drain (up to `grace_secs` for requests in flight), then
        stop every service."""
        self._draining = True
        if delay_secs:
            log.info("not ready: still routing for %.1fs while balancers notice", delay_secs)
            await asyncio.sleep(delay_secs)
            # A balancer slower than the delay (a loaded node, health checks that time out
            # before they fail) still sends: routing goes on while requests keep arriving,
            # until none came for _QUIET_SECS, for at most the delay again.
            quiet_by = time.monotonic() + delay_secs
            while (time.monotonic() - self.leases.last_opened < _QUIET_SECS
                   and time.monotonic() < quiet_by):
                await asyncio.sleep(0.05)
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

    @classmethod
    def in_litellm(cls, config_path: str | Path | None, deployments: OwnedSource,
                   overrides: Mapping[str, Any] | None = None, *, started_as: str,
                   log_to_stderr: bool = False) -> PickerRuntime:
        """A picker inside LiteLLM, started on a thread of its own: its configuration from
        `config_path` (None: none), LLM_PICKER_* variables and `overrides` (config keys); its
        workers LiteLLM's `deployments`. `log_to_stderr`: give the picker's logger a handler
        at `log.level` (the LiteLLM proxy configures none for other libraries' loggers, so
        the start-up lines would not show). The adapters never see the configuration."""
        config = load_config(config_path, env=os.environ, overrides=overrides)
        if log_to_stderr:
            _log_to_stderr(config.log.level)
        runtime = cls(config, Host.LITELLM, deployments=deployments)
        runtime.start_in_thread()
        log.info("llm-picker %s: policy %s, config %s", started_as, config.policy.name,
                 config_path or "from LLM_PICKER_* only")
        return runtime

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

    async def _expire_forever(self) -> None:
        while True:
            await asyncio.sleep(_EXPIRY_PERIOD_SECS)
            expired = self.leases.expire()
            if expired:
                log.warning("released %d requests older than %.0fs", expired,
                            self._config.limits.timeout_secs)


def _log_to_stderr(level: str) -> None:
    picker_log = logging.getLogger("llm_picker")
    if not picker_log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
        picker_log.addHandler(handler)
        picker_log.setLevel(level)
        picker_log.propagate = False  # once, even if the host's root logger gains a handler


def _check_litellm_config(config: PickerConfig) -> None:
    """What LiteLLM mode cannot do, refused at start-up naming the key."""
    if config.workers:
        raise ConfigError("workers", "inside LiteLLM the workers are LiteLLM's deployments "
                          "(model_list); remove workers: from the picker configuration")
    if config.prefix.enabled and config.prefix.index == "kv_events":
        raise ConfigError("prefix.index", "kv_events needs workers declaring kv_events "
                          "endpoints, which LiteLLM deployments cannot: use approximate")
    if config.model_rewrites.rules:
        raise ConfigError("model_rewrites", "LiteLLM picks the model group before the picker "
                          "sees the call, and the picker cannot change the deployment's model: "
                          "use LiteLLM's own model_group_alias or deployment weights")
    for name in ("kubernetes", "dns"):
        if getattr(config.discovery, name) is not None:
            raise ConfigError(f"discovery.{name}", "inside LiteLLM the workers are LiteLLM's "
                              "deployments (model_list): discovery sources need `llm-picker "
                              "serve`")
    if config.enable_igw:
        raise ConfigError("enable_igw", "LiteLLM deployments are regular workers: "
                          "prefill/decode pairs and per-mode routers need `llm-picker serve` "
                          "behind Envoy")


def _decision_tracer(config: PickerConfig) -> DecisionTracer | None:
    """A span per decision when tracing.enabled; opentelemetry only imported then."""
    if not config.tracing.enabled:
        return None
    with extra_needed("tracing.enabled", "tracing", "OpenTelemetry"):
        from picker.observe.tracing import DecisionTracer
    return DecisionTracer()


async def _cancel(task: asyncio.Task[Any]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def _publish_forever(flow: FlowController, snapshots: FlowSnapshots) -> None:
    """A follower's queues, for process 0's status page. A failed write (a full disk; the
    group directory gone while the supervisor stops) is logged once and tried again."""
    failing = False
    while True:
        try:
            snapshots.publish(flow.stats())
            failing = False
        except Exception:
            if not failing:
                log.warning("flow control queues not written for the status page",
                            exc_info=True)
            failing = True
        await asyncio.sleep(PUBLISH_SECS)


async def _tick_forever(flow: FlowController) -> None:
    """Flow control re-checks for room on its own: engine signals and worker readiness (a
    worker starting while requests wait for one) change without a request ending."""
    while True:
        await asyncio.sleep(_FLOW_TICK_SECS)
        flow.tick()
