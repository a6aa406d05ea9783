"""RouterManager: which router serves a request (the SGLang model gateway's router manager).

`enable_igw: false` (the default): one router over every worker, as the picker always had.
`enable_igw: true`: a router per connection mode and kind - regular workers, or prefill/decode
pairs - created as its first worker appears and retired with its last. Per request: the
routers with workers for the model, over each connection mode that serves it (the least
loaded one wins: picker.grpc_route transcodes a request for a gRPC worker); a complete healthy
prefill/decode set is preferred, else regular workers, else a 503 naming what is missing.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from picker.config import PickerConfig
from picker.errors import ModelNotFound, NoHealthyWorker
from picker.fleet.registry import Worker, WorkerRegistry
from picker.fleet.worker_spec import ConnectionMode, WorkerType
from picker.observe.decisions import DecisionLog
from picker.observe.metrics import PickerMetrics
from picker.prefix.producer import PrefixProducer
from picker.routing.request import RoutingRequest
from picker.routing.router import Router

__all__ = ["PdRouters", "RouterManager"]

# The order ties between connection modes break in.
_MODE_ORDER = (ConnectionMode.HTTP, ConnectionMode.GRPC)


@dataclass(frozen=True, slots=True)
class PdRouters:
    """A prefill router and a decode router over one connection mode."""

    prefill: Router
    decode: Router


class RouterManager:
    def __init__(self, workers: WorkerRegistry, config: PickerConfig, metrics: PickerMetrics,
                 prefix: PrefixProducer | None, decisions: DecisionLog | None) -> None:
        """`decisions`: where every router records its decisions (explain.enabled)."""
        self._workers = workers
        self._decisions = decisions
        self._config = config
        self._metrics = metrics
        self._prefix = prefix
        self._policy_params = config.policy_params()
        self.default = self._router(config.policy.name, self._policy_params, None)
        self._lock = threading.Lock()
        self._routers: dict[tuple[ConnectionMode, bool], Router | PdRouters] = {}
        if config.enable_igw:
            workers.add_listener(self)
            self._follow()

    @property
    def igw(self) -> bool:
        return self._config.enable_igw

    def select(self, request: RoutingRequest,
               mode: ConnectionMode | None = None) -> Router | PdRouters:
        """The router for `request`; raises ModelNotFound / NoHealthyWorker naming what is
        missing. `mode`: only that connection mode's routers; None: the model's routers over
        every connection mode that can serve it, the one whose routable workers carry the
        fewest requests each (ties: HTTP), so a model served over HTTP and gRPC spreads over
        both while each request stays within one router's workers."""
        if not self._config.enable_igw:
            return self.default
        model = request.model[:100]
        serving = self._workers.for_model(request.model)
        if not serving:
            raise ModelNotFound(f"no worker serves model {model!r}", param="model")
        modes = [mode] if mode is not None else sorted(
            {w.spec.connection_mode for w in serving}, key=_MODE_ORDER.index)
        found: list[tuple[float, int, Router | PdRouters]] = []
        errors: list[NoHealthyWorker] = []
        for index, each in enumerate(modes):
            mine = [w for w in serving if w.spec.connection_mode is each]
            try:
                router = self._select_in(model, serving, mine, each)
            except NoHealthyWorker as error:
                errors.append(error)
                continue
            routable = [w for w in mine if w.routable]
            found.append((sum(w.in_flight for w in routable) / max(1, len(routable)), index,
                          router))
        if not found:
            raise errors[0]
        return min(found, key=lambda item: item[:2])[2]

    def _select_in(self, model: str, serving: tuple[Worker, ...], mine: list[Worker],
                   mode: ConnectionMode) -> Router | PdRouters:
        if not mine:
            raise NoHealthyWorker(f"model {model!r} is served only over "
                                  f"{', '.join(sorted({w.spec.connection_mode for w in serving}))}"
                                  f", not {mode}")
        roles = {role: [w for w in mine if w.spec.worker_type is role] for role in WorkerType}
        ready = {role: sum(w.routable for w in ws) for role, ws in roles.items()}
        if ready[WorkerType.PREFILL] and ready[WorkerType.DECODE]:
            return self._get(mode, pd=True)
        if ready[WorkerType.REGULAR]:
            return self._get(mode, pd=False)
        # Routable: healthy, not draining, circuit not open (a health-checked engine whose
        # circuit is open is not "healthy" here either).
        counts = ", ".join(f"{role}: {ready[role]} routable of {len(roles[role])}"
                           for role in WorkerType)
        raise NoHealthyWorker(f"model {model!r} has no routable {mode} regular worker and no "
                              f"complete routable {mode} prefill/decode pair ({counts})")

    def describe(self) -> list[dict[str, Any]]:
        """The routers in service, for GET /routers."""
        if not self._config.enable_igw:
            workers = self._workers.workers()
            return [self._view("http-regular", self._config.policy.name, workers)]
        with self._lock:
            routers = dict(self._routers)
        out = []
        for (mode, pd), router in sorted(routers.items()):
            kind = f"{mode}-{'pd' if pd else 'regular'}"
            members = [w for w in self._workers.workers() if _member(w, mode, pd)]
            policy = (f"prefill={router.prefill.default_policy}, "
                      f"decode={router.decode.default_policy}"
                      if isinstance(router, PdRouters) else router.default_policy)
            out.append(self._view(kind, policy, members))
        return sorted(out, key=lambda view: str(view["router"]))

    # RegistryListener: routers appear with their first worker and retire with their last.
    def worker_added(self, worker: Worker) -> None:
        self._follow()

    def worker_removed(self, worker: Worker) -> None:
        self._follow()

    def _follow(self) -> None:
        kinds = {(w.spec.connection_mode, w.spec.worker_type is not WorkerType.REGULAR)
                 for w in self._workers.workers()}
        with self._lock:
            for kind in set(self._routers) - kinds:
                del self._routers[kind]
            for mode, pd in kinds - set(self._routers):
                self._routers[(mode, pd)] = self._build(mode, pd)

    def _get(self, mode: ConnectionMode, pd: bool) -> Router | PdRouters:
        with self._lock:
            router = self._routers.get((mode, pd))
            if router is None:  # a worker added between the listener and this request
                router = self._routers[(mode, pd)] = self._build(mode, pd)
            return router

    def _build(self, mode: ConnectionMode, pd: bool) -> Router | PdRouters:
        if not pd:
            return self._router(self._config.policy.name, self._policy_params,
                                _role(mode, WorkerType.REGULAR))
        roles = self._config.pd_policies()
        routers = {role: self._router(name, {name: params}, _role(mode, WorkerType(role)))
                   for role, (name, params) in roles.items()}
        return PdRouters(prefill=routers["prefill"], decode=routers["decode"])

    def _router(self, policy: str, params: Any, pool: Callable[[Worker], bool] | None) -> Router:
        return Router(self._workers, policy, params, self._metrics, self._prefix,
                      self._config.limits, self._config.load.stale_after_secs,
                      self._decisions, pool)

    def _view(self, kind: str, policy: str, members: Any) -> dict[str, Any]:
        models = sorted({m for w in members for m in w.spec.models} or {"*"}) if members else []
        return {"router": kind, "policy": policy, "workers": len(members),
                "healthy_workers": sum(1 for w in members if w.routable), "models": models}


def _role(mode: ConnectionMode, role: WorkerType) -> Callable[[Worker], bool]:
    return lambda w: w.spec.connection_mode is mode and w.spec.worker_type is role


def _member(worker: Worker, mode: ConnectionMode, pd: bool) -> bool:
    return (worker.spec.connection_mode is mode
            and (worker.spec.worker_type is not WorkerType.REGULAR) is pd)
