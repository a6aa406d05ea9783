"""LiteLLM's deployments as a discovery source: one picker worker per engine address.

Deployments are matched by `model_info.id`; several deployments on one engine (one per model
group) share its worker, so its load is counted once. The worker is named by the operator's own
`model_info.id`, or by the engine's host:port when LiteLLM made the id up. Deployments without
an `api_base` (hosted providers) are not engines the picker can reason about and are left to
LiteLLM. A gRPC deployment (litellm_plugin.grpc_deployment) is a gRPC worker: the picker checks
its health and reads its load over the engine's gRPC service. A deployment whose
`model_info.base_model` names another model group on its engine
is a LoRA adapter of that model (WorkerSpec.adapters), for LoRA affinity.

Like Kubernetes or DNS discovery, the source writes nothing itself: it follows the model list
on the picker's loop (every second) and hands the workers to the worker manager under the
owner `litellm`. A call only reads which worker a deployment is; a call that meets a deployment
the picker does not know yet (added a moment ago) asks the source to catch up and waits for it,
bounded, so the new engine is a candidate at once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

from litellm_plugin.grpc_deployment import ENGINE_KEYS, engine_fields, is_grpc_deployment
from picker.fleet.manager import WorkerManager
from picker.fleet.worker_spec import WorkerSpec, redact_url

__all__ = ["OVERFLOW_KEY", "OWNER", "DeploymentSource", "engine_url"]

log = logging.getLogger("llm_picker.litellm")

# The owner the worker manager names for these workers (admin API refusals, logs).
OWNER = "litellm"
# `model_info: {llm_picker_overflow: true}` marks a deployment's engine as spill-over only
# (WorkerSpec.overflow): it gets the group's calls while its other engines are saturated.
OVERFLOW_KEY = "llm_picker_overflow"
# What LiteLLM fills an unset model_info.id with: the sha256 hex digest of the deployment's
# model group and params (Router.generate_model_id, litellm/router.py in 1.106).
_GENERATED_ID = re.compile(r"[0-9a-f]{64}")
# How often the model list is compared with the workers between calls.
_FOLLOW_SECS = 1.0
# How long a call waits for a deployment it met to become a worker.
_CATCH_UP_SECS = 5.0

Deployments = Callable[[], Iterable[Mapping[str, Any]]]


def engine_url(api_base: str) -> str:
    """`http://host:8000/v1` -> `http://host:8000`: the engine, whatever API path LiteLLM uses."""
    parts = urlsplit(api_base if "://" in api_base else "http://" + api_base)
    base = f"{parts.scheme}://{parts.netloc}"
    try:
        return WorkerSpec(url=base).url  # the registry's spelling, so lookups by url match
    except ValueError:
        return base  # rejected again, and logged, where the worker is registered


class DeploymentSource:
    def __init__(self, deployments: Deployments, whose: str) -> None:
        """`deployments`: reads LiteLLM's current model list; `whose` names it in the log
        ("the proxy's", "the Router's")."""
        self._deployments = deployments
        self._whose = whose
        self._announced = False
        self._manager: WorkerManager | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._seen: frozenset[tuple[str, ...]] | None = None
        self._worker_of: dict[str, str] = {}  # deployment id -> worker id; swapped whole

    def attach(self, manager: WorkerManager) -> None:
        self._manager = manager

    @property
    def synced(self) -> bool:
        return self._seen is not None

    async def start(self) -> None:
        """Workers now, not at the first call: health checks and engine metrics start at once."""
        self._loop = asyncio.get_running_loop()
        self._apply(list(self._deployments()))
        self._task = asyncio.create_task(self._follow_forever())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def worker_id(self, deployment: Mapping[str, Any]) -> str | None:
        return self._worker_of.get(str(deployment.get("model_info", {}).get("id")))

    def catch_up(self, met: Iterable[Mapping[str, Any]]
                 ) -> concurrent.futures.Future[None] | None:
        """A call met these deployments: if one is new or changed since the model list was
        last applied, the source applies the current list on its loop; the future to wait
        for (None: nothing to wait for)."""
        loop, seen = self._loop, self._seen
        if loop is None or seen is None or all(_what_matters(d) in seen for d in met):
            return None

        async def apply_now() -> None:
            self._apply(list(self._deployments()))

        return asyncio.run_coroutine_threadsafe(apply_now(), loop)

    async def _follow_forever(self) -> None:
        while True:
            await asyncio.sleep(_FOLLOW_SECS)
            self._apply(list(self._deployments()))

    def _apply(self, deployments: list[Mapping[str, Any]]) -> None:
        """Follow the model list (deployments added, deleted, or updated in place, e.g. moved
        to another api_base); cheap when unchanged."""
        seen = frozenset(_what_matters(d) for d in deployments)
        if seen == self._seen:
            return
        assert self._manager is not None, "DeploymentSource.attach() was not called"
        wanted: dict[str, tuple[set[str], set[str], str | None, bool]] = {}
        grpc: dict[str, dict[str, Any]] = {}  # engine url -> its gRPC worker fields
        bases: dict[str, dict[str, str]] = {}  # engine url -> model name -> its base_model
        for deployment in deployments:
            api_base = _api_base(deployment)
            if not api_base:
                continue
            url = engine_url(api_base)
            params = deployment.get("litellm_params", {})
            if is_grpc_deployment(params):
                grpc[url] = engine_fields(params)
            # An empty key (a common placeholder for engines without one) is no key.
            key = params.get("api_key") or None
            info = deployment.get("model_info", {})
            models, ids_here, _, _ = wanted.setdefault(
                url, (set(), set(), key, info.get(OVERFLOW_KEY) is True))
            models.add(str(deployment.get("model_name")))
            ids_here.add(str(info.get("id")))
            base = info.get("base_model")
            if isinstance(base, str):
                bases.setdefault(url, {})[str(deployment.get("model_name"))] = base
        specs: list[WorkerSpec] = []
        for url, (models, dep_ids, api_key, overflow) in wanted.items():
            # A LoRA adapter is a deployment whose model_info.base_model names another model
            # group on the same engine (LiteLLM's own base_model values, such as
            # "azure/gpt-4", name no group there and are left alone).
            adapters = {name: base for name, base in bases.get(url, {}).items()
                        if base != name and base in models}
            try:
                specs.append(WorkerSpec.model_validate({
                    "url": url, "id": _worker_name(dep_ids, url), "models": sorted(models),
                    "adapters": adapters, "api_key": api_key, "overflow": overflow,
                    **grpc.get(url, {})}))
            except ValueError as exc:
                log.warning("deployment at %s not routed by the picker: %s", redact_url(url),
                            exc)
        workers = self._manager.adopt(OWNER, specs)
        self._worker_of = {dep_id: workers[url].id for url, (_, dep_ids, _, _) in wanted.items()
                           if url in workers for dep_id in dep_ids}
        self._seen = seen
        if deployments and not self._announced:
            self._announced = True
            log.info("llm-picker routes %d of %s %d deployments, as %d workers (deployments "
                     "without api_base are left to LiteLLM)",
                     sum(self.worker_id(d) is not None for d in deployments), self._whose,
                     len(deployments), len(workers))


def wait_for(catching_up: concurrent.futures.Future[None] | None) -> None:
    """Block until the source caught up (a synchronous call), bounded."""
    if catching_up is not None:
        catching_up.result(_CATCH_UP_SECS)


async def wait_for_async(catching_up: concurrent.futures.Future[None] | None) -> None:
    """`wait_for` for a call on an event loop (not the source's)."""
    if catching_up is not None:
        await asyncio.wait_for(asyncio.wrap_future(catching_up), _CATCH_UP_SECS)


def _worker_name(deployment_ids: set[str], url: str) -> str:
    """The smallest id the operator gave an engine's deployments, else its host:port: a
    generated id is 64 hex digits nobody recognises in an explain line or /debug/decisions."""
    given = sorted(i for i in deployment_ids if not _GENERATED_ID.fullmatch(i))
    return given[0] if given else urlsplit(url).netloc


def _what_matters(deployment: Mapping[str, Any]) -> tuple[str, ...]:
    """What of a deployment its worker depends on."""
    params = deployment.get("litellm_params", {})
    info = deployment.get("model_info", {})
    return (str(info.get("id")), str(deployment.get("model_name")), str(params.get("model")),
            str(params.get("api_base")), str(params.get("api_key")), str(info.get("base_model")),
            str(info.get(OVERFLOW_KEY)), *(str(params.get(key)) for key in ENGINE_KEYS))


def _api_base(deployment: Mapping[str, Any]) -> str:
    return str(deployment.get("litellm_params", {}).get("api_base") or "")
