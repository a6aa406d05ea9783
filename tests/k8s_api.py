"""A loopback Kubernetes API server speaking the real list/watch wire protocol.

Enough of it for discovery: namespaced pods (labelSelector) and InferencePools (fieldSelector
metadata.name), JSON lists carrying `metadata.resourceVersion`, watches as chunked streams of
one JSON event per line from a resourceVersion, BOOKMARK events when `allowWatchBookmarks`, an
ERROR event with a 410 Status once the version fell out of the retained window (`compact`),
`timeoutSeconds`, bearer-token auth and 403 Status bodies for resources the test forbids.
The test mutates objects and can cut every open watch (`cut_watches`: the connection aborts
mid-stream, as when an API server restarts).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

__all__ = ["FakeKubeApi", "objective", "pod", "pool", "serving_in_thread"]

POOLS = "/apis/inference.networking.k8s.io/v1/namespaces/{ns}/inferencepools"
OBJECTIVES = "/apis/inference.networking.x-k8s.io/v1alpha2/namespaces/{ns}/inferenceobjectives"
PODS = "/api/v1/namespaces/{ns}/pods"


def pod(name: str, ip: str, labels: dict[str, str], ready: bool = True,
        terminating: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": "ns", "labels": labels}
    if terminating:
        meta["deletionTimestamp"] = "2025-01-01T00:00:00Z"
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta,
            "status": {"podIP": ip, "phase": "Running", "conditions": [
                {"type": "Ready", "status": "True" if ready else "False"}]}}


def pool(name: str, labels: dict[str, str], ports: list[int]) -> dict[str, Any]:
    return {"apiVersion": "inference.networking.k8s.io/v1", "kind": "InferencePool",
            "metadata": {"name": name, "namespace": "ns"},
            "spec": {"selector": {"matchLabels": labels},
                     "targetPorts": [{"number": p} for p in ports],
                     "endpointPickerRef": {"name": "picker", "port": {"number": 9002}}}}


def objective(name: str, pool_name: str, priority: int | None) -> dict[str, Any]:
    spec: dict[str, Any] = {"poolRef": {"name": pool_name}}
    if priority is not None:
        spec["priority"] = priority
    return {"apiVersion": "inference.networking.x-k8s.io/v1alpha2",
            "kind": "InferenceObjective", "metadata": {"name": name, "namespace": "ns"},
            "spec": spec}


@dataclass
class _Event:
    version: int
    resource: str  # "pods" | "inferencepools" | "inferenceobjectives"
    type: str
    obj: dict[str, Any]


@dataclass
class FakeKubeApi:
    token: str = "test-token"
    bookmark_secs: float = 0.2
    forbidden: set[str] = field(default_factory=set)  # resources answering 403
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._version = 100
        self._objects: dict[str, dict[str, dict[str, Any]]] = {
            "pods": {}, "inferencepools": {}, "inferenceobjectives": {}}
        self._events: list[_Event] = []
        self._oldest = 100  # watches from before this version get 410 Gone
        self._wake = asyncio.Condition()
        self._open: list[web.Request] = []
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get(PODS.format(ns="{ns}"), self._handler("pods"))
        app.router.add_get(POOLS.format(ns="{ns}"), self._handler("inferencepools"))
        app.router.add_get(OBJECTIVES.format(ns="{ns}"), self._handler("inferenceobjectives"))
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"

    async def close(self) -> None:
        self.cut_watches()
        if self._runner is not None:
            await self._runner.cleanup()

    def kubeconfig(self) -> str:
        return json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "test",
            "clusters": [{"name": "test", "cluster": {"server": self.url}}],
            "users": [{"name": "test", "user": {"token": self.token}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}]})

    # -- what the test changes ----------------------------------------------------------------

    async def put(self, resource: str, obj: dict[str, Any]) -> None:
        name = obj["metadata"]["name"]
        kind = "MODIFIED" if name in self._objects[resource] else "ADDED"
        await self._record(resource, kind, obj)

    async def delete(self, resource: str, name: str) -> None:
        await self._record(resource, "DELETED", self._objects[resource][name])

    def compact(self) -> None:
        """Forget history: a watch from any version seen so far gets 410 Gone."""
        self._oldest = self._version + 1
        self._events.clear()

    def cut_watches(self) -> None:
        for request in list(self._open):
            if request.transport is not None:
                request.transport.abort()  # the connection drops mid-stream, no final chunk

    def watches(self, resource: str) -> list[dict[str, str]]:
        return [q for path, q in self.requests if path.endswith(resource) and q.get("watch")]

    async def _record(self, resource: str, kind: str, obj: dict[str, Any]) -> None:
        async with self._wake:
            self._version += 1
            obj = copy.deepcopy(obj)
            obj["metadata"]["resourceVersion"] = str(self._version)
            if kind == "DELETED":
                del self._objects[resource][obj["metadata"]["name"]]
            else:
                self._objects[resource][obj["metadata"]["name"]] = obj
            self._events.append(_Event(self._version, resource, kind, obj))
            self._wake.notify_all()

    # -- the API ------------------------------------------------------------------------------

    def _handler(self, resource: str) -> Any:
        async def handle(request: web.Request) -> web.StreamResponse:
            query = dict(request.query)
            self.requests.append((request.path, query))
            if request.headers.get("authorization") != f"Bearer {self.token}":
                return _status(401, "Unauthorized", "Unauthorized")
            if resource in self.forbidden:
                group = "inference.networking.k8s.io" if resource == "inferencepools" else ""
                verb = "watch" if query.get("watch") else "list"
                return _status(403, "Forbidden", (
                    f'{resource} is forbidden: User "system:serviceaccount:ns:picker" cannot '
                    f'{verb} resource "{resource}" in API group "{group}" in the namespace '
                    f'"{request.match_info["ns"]}"'))
            if query.get("watch") in ("true", "True", "1"):
                return await self._watch(request, resource, query)
            items = [o for o in self._objects[resource].values() if _matches(o, query)]
            return web.json_response({"kind": "List", "apiVersion": "v1", "items": items,
                                      "metadata": {"resourceVersion": str(self._version)}})
        return handle

    async def _watch(self, request: web.Request, resource: str,
                     query: dict[str, str]) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_type = "application/json"
        await response.prepare(request)
        since = int(query.get("resourceVersion") or self._version)
        if since < self._oldest - 1:
            await _send(response, {"type": "ERROR", "object": {
                "kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 410,
                "reason": "Expired", "message": f"too old resource version: {since}"}})
            return response
        deadline = time.monotonic() + float(query.get("timeoutSeconds") or 60)
        bookmarks = query.get("allowWatchBookmarks") in ("true", "True", "1")
        self._open.append(request)
        try:
            while (left := deadline - time.monotonic()) > 0:
                for event in [e for e in self._events if e.version > since]:
                    since = event.version
                    if event.resource == resource and _matches(event.obj, query):
                        await _send(response, {"type": event.type, "object": event.obj})
                async with self._wake:
                    if any(e.version > since for e in self._events):
                        continue  # recorded while the last event was being sent
                    try:
                        await asyncio.wait_for(self._wake.wait(),
                                               min(left, self.bookmark_secs))
                    except TimeoutError:
                        if bookmarks:
                            since = self._version
                            await _send(response, {"type": "BOOKMARK", "object": {
                                "kind": "Pod", "apiVersion": "v1",
                                "metadata": {"resourceVersion": str(since)}}})
        finally:
            self._open.remove(request)
        await response.write_eof()
        return response


@contextlib.contextmanager
def serving_in_thread(api: FakeKubeApi) -> Iterator[asyncio.AbstractEventLoop]:
    """Serve `api` from a loop of its own on a daemon thread, for tests whose client is another
    process; yields that loop (change objects with asyncio.run_coroutine_threadsafe)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="k8s-api", daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(api.start(), loop).result(10)
    try:
        yield loop
    finally:
        asyncio.run_coroutine_threadsafe(api.close(), loop).result(10)
        asyncio.run_coroutine_threadsafe(_cancel_the_rest(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


async def _cancel_the_rest() -> None:
    """Handlers still running (watches cut from the server side end on their next write)."""
    rest = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    for task in rest:
        task.cancel()
    await asyncio.gather(*rest, return_exceptions=True)


def _matches(obj: dict[str, Any], query: dict[str, str]) -> bool:
    labels = obj["metadata"].get("labels") or {}
    for term in filter(None, query.get("labelSelector", "").split(",")):
        key, _, value = term.partition("=")
        if labels.get(key) != value:
            return False
    for term in filter(None, query.get("fieldSelector", "").split(",")):
        key, _, value = term.partition("=")
        if key != "metadata.name" or obj["metadata"]["name"] != value:
            return False
    return True


async def _send(response: web.StreamResponse, event: dict[str, Any]) -> None:
    await response.write(json.dumps(event).encode() + b"\n")


def _status(code: int, reason: str, message: str) -> web.Response:
    return web.json_response({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                              "code": code, "reason": reason, "message": message}, status=code)
