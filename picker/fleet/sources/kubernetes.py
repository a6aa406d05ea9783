"""Workers from the Kubernetes API: an InferencePool (or a label selector) and its ready pods.

Two reflectors (list, then watch from the list's resourceVersion) follow the pool and its pods
(a third, with flow control on, the InferenceObjectives that refer to the pool: their
priorities go to the ObjectiveSink);
one applier turns what they hold into `WorkerManager.declare("kubernetes:<ns>/<pool>", specs)`,
coalescing bursts of events into one call. The protocol, as the API defines it:

- a watch ends server-side after `timeoutSeconds` and resumes from the last resourceVersion
  seen (BOOKMARK events advance it without an object change);
- `410 Gone` (the version fell out of the API's window) or a broken connection re-lists, so an
  object deleted while nobody watched is still noticed (the new list replaces the old view);
- `403` logs what the service account lacks, by verb and resource, and retries with backoff
  (RBAC is often applied after the pod starts).

Client: kubernetes_asyncio, the one async client whose watch passes `allowWatchBookmarks` and
surfaces 410 to the caller instead of silently re-watching from "now" (which loses deletions);
measurements in README "Kubernetes". It is imported only when this source is configured.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp
from kubernetes_asyncio import client, config, watch
from kubernetes_asyncio.client.exceptions import ApiException

from picker.errors import ConfigError
from picker.fleet.manager import WorkerManager
from picker.fleet.sources.pods import (
    PoolTarget,
    pool_target,
    selector_string,
    settings_target,
    worker_specs,
)
from picker.fleet.sources.protocols import ObjectiveSink
from picker.fleet.sources.settings import KubernetesSettings
from picker.fleet.sources.status import SourceStatus

__all__ = ["KubernetesSource"]

log = logging.getLogger("llm_picker.sources.kubernetes")

POOL_GROUP, POOL_VERSION, POOL_PLURAL = "inference.networking.k8s.io", "v1", "inferencepools"
# The Gateway API Inference Extension's InferenceObjective (its
# apix/v1alpha2/zz_generated.register.go:31-34; llm-d-router serves the same kind as llm-d.ai).
OBJECTIVE_GROUP, OBJECTIVE_VERSION, OBJECTIVE_PLURAL = \
    "inference.networking.x-k8s.io", "v1alpha2", "inferenceobjectives"
_SA_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
_BACKOFF_INITIAL_SECS, _BACKOFF_MAX_SECS = 0.2, 10.0

Object = dict[str, Any]
Lister = Callable[[], Awaitable[tuple[list[Object], str]]]
# Streams events after a resourceVersion; returns the last version seen when the watch ends.
Watcher = Callable[[str, Callable[[str, Object], None]], Awaitable[str]]


class KubernetesSource(SourceStatus):
    def __init__(self, settings: KubernetesSettings, manager: WorkerManager,
                 environ: Mapping[str, str] = os.environ,
                 objectives: ObjectiveSink | None = None) -> None:
        super().__init__(log)
        self._objective_sink = objectives
        self._objectives: dict[str, Object] = {}
        self._settings = settings
        self._manager = manager
        self._environ = environ
        self._namespace = settings.namespace or ""
        self._api: Any = None
        self._tasks: list[asyncio.Task[None]] = []
        self._target: PoolTarget | None = None
        self._pods: dict[str, Object] = {}
        self._listed = False  # the pods of the current target have been listed
        self._changed = asyncio.Event()
        self._pods_task: asyncio.Task[None] | None = None

    @property
    def owner(self) -> str:
        """Who owns the workers found (what the admin API's refusals name)."""
        what = self._settings.inference_pool or selector_string(settings_target(self._settings))
        return f"kubernetes:{self._namespace}/{what}"

    async def start(self) -> None:
        """Connect (in-cluster service account, else kubeconfig) and start following; the
        first sync happens in the background, readiness waits for it."""
        self._namespace = self._settings.namespace or self._own_namespace()
        configuration = client.Configuration()
        try:
            if self._settings.kubeconfig is None and "KUBERNETES_SERVICE_HOST" in self._environ:
                incluster: Any = config.load_incluster_config  # untyped in the library
                incluster(client_configuration=configuration)
            else:
                await config.load_kube_config(config_file=self._settings.kubeconfig,
                                              client_configuration=configuration)
        except (config.ConfigException, OSError, ValueError) as exc:
            raise ConfigError("discovery.kubernetes.kubeconfig",
                              f"no usable Kubernetes credentials: {exc}") from exc
        self._api = client.ApiClient(configuration)
        self._tasks.append(asyncio.create_task(self._apply_forever()))
        if self._settings.inference_pool is None:
            self._follow(settings_target(self._settings))
        else:
            self._tasks.append(asyncio.create_task(self._reflect(
                f"inferencepools/{self._settings.inference_pool}", self._list_pool,
                self._watch_pool, self._pool_listed, self._pool_event)))
            if self._objective_sink is not None:
                self._tasks.append(asyncio.create_task(self._reflect(
                    OBJECTIVE_PLURAL, self._list_objectives, self._watch_objectives,
                    self._objectives_listed, self._objective_event)))

    async def stop(self) -> None:
        tasks = [*self._tasks, *([self._pods_task] if self._pods_task else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._api is not None:
            await self._api.close()

    def _own_namespace(self) -> str:
        try:
            return _SA_NAMESPACE.read_text().strip()
        except OSError as exc:
            raise ConfigError("discovery.kubernetes.namespace", "not set, and not running in a "
                              f"pod with a service account ({exc})") from exc

    # -- what is followed ---------------------------------------------------------------------

    def _follow(self, target: PoolTarget | None) -> None:
        """(Re)start following the pods of `target`; None: the pool is gone, drain them all."""
        if target == self._target and (target is None or self._pods_task is not None):
            return
        if self._pods_task is not None:
            self._pods_task.cancel()
            self._pods_task = None
        self._target, self._listed = target, False
        if target is None:
            self._pods, self._listed = {}, True
            self._changed.set()
            return
        log.info("following pods %s in %s, ports %s", selector_string(target), self._namespace,
                 ",".join(map(str, target.ports)))
        self._pods_task = asyncio.create_task(self._reflect(
            "pods", self._list_pods, self._watch_pods, self._pods_listed, self._pod_event))

    def _pool_listed(self, pools: list[Object]) -> None:
        if not pools:
            self._failed(f"InferencePool {self._namespace}/{self._settings.inference_pool} "
                        "not found")
            self._follow(None)
        else:
            self._pool_event("ADDED", pools[0])

    def _pool_event(self, kind: str, pool: Object) -> None:
        if kind == "DELETED":
            self._pool_listed([])
            return
        try:
            target = pool_target(pool)
        except ValueError as exc:
            self._failed(f"InferencePool {self._namespace}/{self._settings.inference_pool}: "
                        f"{exc}")
            self._follow(None)
            return
        self._follow(target)

    def _pods_listed(self, pods: list[Object]) -> None:
        self._pods = {p["metadata"]["name"]: p for p in pods}
        self._listed = True
        self._changed.set()

    def _pod_event(self, kind: str, pod: Object) -> None:
        name = pod["metadata"]["name"]
        if kind == "DELETED":
            self._pods.pop(name, None)
        else:
            self._pods[name] = pod
        self._changed.set()

    def _objectives_listed(self, objectives: list[Object]) -> None:
        self._objectives = {o["metadata"]["name"]: o for o in objectives}
        self._report_objectives()

    def _objective_event(self, kind: str, objective: Object) -> None:
        name = objective["metadata"]["name"]
        if kind == "DELETED":
            self._objectives.pop(name, None)
        else:
            self._objectives[name] = objective
        self._report_objectives()

    def _report_objectives(self) -> None:
        """The priorities of the objectives that refer to this pool (`spec.poolRef.name`);
        an unset priority is 0, a malformed one is skipped with a warning."""
        assert self._objective_sink is not None
        priorities: dict[str, int] = {}
        for name, objective in self._objectives.items():
            spec = objective.get("spec") or {}
            if (spec.get("poolRef") or {}).get("name") != self._settings.inference_pool:
                continue
            priority = spec.get("priority", 0)
            if isinstance(priority, int) and not isinstance(priority, bool):
                priorities[name] = priority
            else:
                log.warning("InferenceObjective %s/%s: spec.priority %r is not an integer; "
                            "ignored", self._namespace, name, priority)
        self._objective_sink.discovered(priorities)

    async def _apply_forever(self) -> None:
        """Declare the current view after each change (bursts coalesce into one call), and
        every resync_secs so a worker whose engine did not answer yet is retried."""
        while True:
            # asyncio.timeout, not wait_for: on 3.11 wait_for swallows a cancellation that
            # arrives as the event is set (CPython bpo-42130) and this loop would outlive stop().
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._settings.resync_secs):
                    await self._changed.wait()
            self._changed.clear()
            if not self._listed:
                continue
            target = self._target
            specs = [] if target is None else worker_specs(self._pods.values(), target,
                                                          self._settings)
            await self._manager.declare(self.owner, specs, self._settings.drain_timeout_secs)
            if not self._synced:
                log.info("kubernetes discovery synced: %d workers from %s", len(specs),
                         self.owner)
            self._synced = True

    # -- list + watch -------------------------------------------------------------------------

    async def _reflect(self, what: str, list_once: Lister, watch_from: Watcher,
                       on_list: Callable[[list[Object]], None],
                       on_event: Callable[[str, Object], None]) -> None:
        """List, then watch from the list's version; resume after a watch's normal end,
        re-list after 410 Gone or a broken connection, back off after other failures."""
        delay = _BACKOFF_INITIAL_SECS
        while True:
            try:
                items, version = await list_once()
                on_list(items)
                self._last_error = None
                delay = _BACKOFF_INITIAL_SECS
                while True:
                    version = await watch_from(version, on_event)
            except ApiException as exc:
                if exc.status == 410:
                    log.info("%s: resourceVersion expired (410 Gone), listing again", what)
                    continue
                self._failed(_api_error(exc, what, self._namespace))
            except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
                self._failed(f"{what} in {self._namespace}: {type(exc).__name__}: {exc}"[:300])
            await asyncio.sleep(delay)
            delay = min(delay * 2, _BACKOFF_MAX_SECS)

    async def _list_pods(self) -> tuple[list[Object], str]:
        assert self._target is not None
        core = client.CoreV1Api(self._api)
        return await _listed(core.list_namespaced_pod(
            self._namespace, label_selector=selector_string(self._target),
            _preload_content=False))

    async def _watch_pods(self, version: str, on_event: Callable[[str, Object], None]) -> str:
        assert self._target is not None
        core = client.CoreV1Api(self._api)
        return await self._watch(core.list_namespaced_pod, version, on_event, self._namespace,
                                 label_selector=selector_string(self._target))

    async def _list_pool(self) -> tuple[list[Object], str]:
        custom = client.CustomObjectsApi(self._api)
        return await _listed(custom.list_namespaced_custom_object(
            POOL_GROUP, POOL_VERSION, self._namespace, POOL_PLURAL,
            field_selector=f"metadata.name={self._settings.inference_pool}",
            _preload_content=False))

    async def _watch_pool(self, version: str, on_event: Callable[[str, Object], None]) -> str:
        custom = client.CustomObjectsApi(self._api)
        return await self._watch(
            custom.list_namespaced_custom_object, version, on_event, POOL_GROUP, POOL_VERSION,
            self._namespace, POOL_PLURAL,
            field_selector=f"metadata.name={self._settings.inference_pool}")

    async def _list_objectives(self) -> tuple[list[Object], str]:
        custom = client.CustomObjectsApi(self._api)
        return await _listed(custom.list_namespaced_custom_object(
            OBJECTIVE_GROUP, OBJECTIVE_VERSION, self._namespace, OBJECTIVE_PLURAL,
            _preload_content=False))

    async def _watch_objectives(self, version: str,
                                on_event: Callable[[str, Object], None]) -> str:
        custom = client.CustomObjectsApi(self._api)
        return await self._watch(
            custom.list_namespaced_custom_object, version, on_event, OBJECTIVE_GROUP,
            OBJECTIVE_VERSION, self._namespace, OBJECTIVE_PLURAL)

    async def _watch(self, call: Any, version: str, on_event: Callable[[str, Object], None],
                     *args: Any, **kwargs: Any) -> str:
        async with watch.Watch() as stream:
            async for event in stream.stream(
                    call, *args, resource_version=version, allow_watch_bookmarks=True,
                    timeout_seconds=self._settings.watch_timeout_secs, **kwargs):
                if event["type"] in ("ADDED", "MODIFIED", "DELETED"):
                    on_event(event["type"], event["raw_object"])
            return str(stream.resource_version or version)


async def _listed(call: Awaitable[Any]) -> tuple[list[Object], str]:
    """A list response's items and resourceVersion (raw JSON: no model round trip)."""
    response = await call
    try:
        body = json.loads(await response.read())
    finally:
        response.release()
    if not 200 <= response.status < 300:  # unchecked by the client without preloading
        message = body.get("message") if isinstance(body, dict) else None
        raise ApiException(status=response.status, reason=str(message or response.reason))
    return list(body.get("items") or []), str(body["metadata"]["resourceVersion"])


def _api_error(exc: ApiException, what: str, namespace: str) -> str:
    if exc.status == 403:
        resource = what.split("/")[0]
        group = {POOL_PLURAL: f" (API group {POOL_GROUP})",
                 OBJECTIVE_PLURAL: f" (API group {OBJECTIVE_GROUP})"}.get(resource, "")
        return (f"forbidden to list/watch {resource}{group} in namespace {namespace}: the "
                f"service account needs get, list and watch on {resource} there (Role + "
                f"RoleBinding, see deploy/): {exc.reason}"[:400])
    return f"{what} in {namespace}: HTTP {exc.status} {exc.reason}"[:300]
