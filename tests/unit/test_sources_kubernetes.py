"""Kubernetes discovery through kubernetes_asyncio against a loopback API server (tests/k8s_api)
speaking the real list/watch protocol; pods are engine stubs on 127.0.0.2-4 answering
/v1/models, so registration goes through the real WorkerManager path."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("kubernetes_asyncio")

from aiohttp import web  # noqa: E402 - after the extra's check

from picker.config import load_config  # noqa: E402
from picker.errors import ConfigError  # noqa: E402
from picker.fleet.manager import WorkerManager  # noqa: E402
from picker.fleet.registry import WorkerRegistry  # noqa: E402
from picker.fleet.served_models import DiscoverySettings  # noqa: E402
from picker.fleet.sources.kubernetes import KubernetesSource  # noqa: E402
from picker.fleet.sources.settings import KubernetesSettings  # noqa: E402
from picker.routing.flow import Objectives  # noqa: E402
from tests.k8s_api import FakeKubeApi, objective, pod, pool  # noqa: E402

IPS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
VLLM = {"app": "vllm"}


def _free_port() -> int:
    for _ in range(20):
        with socket.socket() as probe:
            probe.bind((IPS[0], 0))
            port = int(probe.getsockname()[1])
        try:
            for ip in IPS:
                with socket.socket() as other:
                    other.bind((ip, port))
            return port
        except OSError:
            continue
    raise RuntimeError("no port free on every test address")


@contextlib.asynccontextmanager
async def vllm_models(ips: Sequence[str], ports: Sequence[int]) -> AsyncIterator[None]:
    """Engine stubs answering /v1/models like vLLM on every address x port given."""
    app = web.Application()

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"data": [{"id": "m"}]})

    app.router.add_get("/v1/models", models)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.1)
    await runner.setup()
    for ip in ips:
        for port in ports:
            await web.TCPSite(runner, ip, port).start()
    try:
        yield
    finally:
        await runner.cleanup()


@pytest.fixture
async def engines() -> AsyncIterator[tuple[int, int]]:
    """Two ports, each served on every test address, answering like vLLM."""
    ports = (_free_port(), _free_port())
    async with vllm_models(IPS, ports):
        yield ports


@pytest.fixture
async def api() -> AsyncIterator[FakeKubeApi]:
    server = FakeKubeApi()
    await server.start()
    yield server
    await server.close()


class Fleet:
    def __init__(self, api: FakeKubeApi, tmp_path: Path, objectives: Objectives | None = None,
                 **settings: Any) -> None:
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(api.kubeconfig())
        self.registry = WorkerRegistry([])
        self.manager = WorkerManager(self.registry, DiscoverySettings(max_wait_secs=2))
        self.source = KubernetesSource(KubernetesSettings(
            namespace="ns", kubeconfig=str(kubeconfig), watch_timeout_secs=1,
            drain_timeout_secs=0.5, resync_secs=0.5, **settings), self.manager, environ={},
            objectives=objectives)

    def ids(self) -> set[str]:
        return {w.id for w in self.registry.workers()}

    async def until(self, check: Callable[[], bool], what: str, secs: float = 8.0) -> None:
        deadline = time.monotonic() + secs
        while not check():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}: workers {self.ids()}, "
                                     f"last error {self.source.last_error}")
            await asyncio.sleep(0.02)


@pytest.fixture
async def fleet(api: FakeKubeApi, tmp_path: Path,
                engines: tuple[int, int]) -> AsyncIterator[Fleet]:
    port = engines[0]
    await api.put("inferencepools", pool("pool", VLLM, [port]))
    await api.put("pods", pod("a", IPS[0], VLLM))
    await api.put("pods", pod("b", IPS[1], VLLM, ready=False))
    await api.put("pods", pod("c", IPS[2], {"app": "other"}))
    await api.put("pods", pod("d", IPS[2], VLLM, terminating=True))
    fleet = Fleet(api, tmp_path, inference_pool="pool")
    await fleet.manager.start()
    await fleet.source.start()
    await fleet.until(lambda: fleet.source.synced, "the first sync")
    yield fleet
    await fleet.source.stop()
    await fleet.manager.stop()


async def test_ready_pods_of_the_pool_become_workers_and_follow_changes(
        fleet: Fleet, api: FakeKubeApi, engines: tuple[int, int]) -> None:
    port = engines[0]
    assert fleet.ids() == {f"a:{port}"}  # b unready, c not selected, d terminating
    worker = fleet.registry.get(f"a:{port}")
    assert worker is not None and worker.spec.models == ["m"]  # from /v1/models
    assert fleet.manager.declared_in(worker) == "kubernetes:ns/pool"

    await api.put("pods", pod("b", IPS[1], VLLM))
    await fleet.until(lambda: fleet.ids() == {f"a:{port}", f"b:{port}"}, "b ready")
    await api.put("pods", pod("a", IPS[0], VLLM, ready=False))
    await fleet.until(lambda: fleet.ids() == {f"b:{port}"}, "a unready drained")
    await api.delete("pods", "b")
    await fleet.until(lambda: fleet.ids() == set(), "b deleted drained")


async def test_the_pools_selector_and_ports_are_followed(
        fleet: Fleet, api: FakeKubeApi, engines: tuple[int, int]) -> None:
    first, second = engines
    await api.put("inferencepools", pool("pool", {"app": "other"}, [first, second]))
    # Several target ports: each one its own endpoint (a data-parallel rank).
    await fleet.until(lambda: fleet.ids() == {f"c:{first}", f"c:{second}"}, "new selector")
    ranks = {w.spec.labels["port_rank"] for w in fleet.registry.workers()}
    assert ranks == {"0", "1"}
    await api.delete("inferencepools", "pool")
    await fleet.until(lambda: fleet.ids() == set(), "pool deleted")
    assert "not found" in (fleet.source.last_error or "")


async def test_watches_resume_from_the_last_bookmark_without_relisting(
        fleet: Fleet, api: FakeKubeApi) -> None:
    # The pods' watch starts after their list: on a busy machine, not yet when the fleet is up.
    await fleet.until(lambda: len(api.watches("pods")) >= 1, "the first watch")
    listed_version = int(api.watches("pods")[0]["resourceVersion"])
    # watch_timeout_secs=1: the server ends each watch, the client resumes it.
    await fleet.until(lambda: len(api.watches("pods")) >= 3, "resumed watches")
    later = [int(q["resourceVersion"]) for q in api.watches("pods")[1:]]
    lists = [q for path, q in api.requests if path.endswith("/pods") and not q.get("watch")]
    assert len(lists) == 1
    # Nothing changed among the pods; only bookmarks can have moved the version on.
    await api.put("pods", pod("c", IPS[2], {"app": "other", "x": "y"}))  # not selected
    await fleet.until(lambda: int(api.watches("pods")[-1]["resourceVersion"])
                      > listed_version, "a bookmark's version")
    assert all(q["allowWatchBookmarks"] in ("true", "True") for q in api.watches("pods"))
    assert min(later) >= listed_version


async def test_a_cut_watch_relists_and_sees_what_it_missed(
        fleet: Fleet, api: FakeKubeApi, engines: tuple[int, int]) -> None:
    port = engines[0]
    await api.put("pods", pod("b", IPS[1], VLLM))
    await fleet.until(lambda: fleet.ids() == {f"a:{port}", f"b:{port}"}, "b ready")
    lists_before = _pod_lists(api)
    api.cut_watches()
    await api.delete("pods", "a")
    await fleet.until(lambda: fleet.ids() == {f"b:{port}"}, "a gone after the cut")
    assert _pod_lists(api) > lists_before


async def test_410_gone_relists(fleet: Fleet, api: FakeKubeApi,
                                engines: tuple[int, int]) -> None:
    port = engines[0]
    lists_before = _pod_lists(api)
    await api.put("pods", pod("b", IPS[1], VLLM))
    await fleet.until(lambda: fleet.ids() == {f"a:{port}", f"b:{port}"}, "b ready")
    # The events go while no watch is open; the history is compacted; resuming gets 410.
    api.bookmark_secs = 10.0  # no bookmark may carry the client past the compaction
    api.cut_watches()
    await api.delete("pods", "a")
    api.compact()
    await fleet.until(lambda: fleet.ids() == {f"b:{port}"}, "a gone after 410")
    assert _pod_lists(api) > lists_before


@pytest.mark.parametrize("resource", ["pods", "inferencepools"])
async def test_rbac_403_names_the_missing_permission_and_recovers(
        api: FakeKubeApi, tmp_path: Path, engines: tuple[int, int], resource: str) -> None:
    await api.put("inferencepools", pool("pool", VLLM, [engines[0]]))
    await api.put("pods", pod("a", IPS[0], VLLM))
    api.forbidden = {resource}
    fleet = Fleet(api, tmp_path, inference_pool="pool")
    await fleet.manager.start()
    await fleet.source.start()
    try:
        await fleet.until(lambda: fleet.source.last_error is not None, "the 403")
        error = fleet.source.last_error or ""
        assert f"get, list and watch on {resource}" in error and "namespace ns" in error
        if resource == "inferencepools":
            assert "inference.networking.k8s.io" in error
        assert not fleet.source.synced
        api.forbidden = set()  # the RoleBinding is applied
        await fleet.until(lambda: fleet.source.synced and len(fleet.ids()) == 1, "recovery")
    finally:
        await fleet.source.stop()
        await fleet.manager.stop()


async def test_a_selector_without_the_crd(api: FakeKubeApi, tmp_path: Path,
                                          engines: tuple[int, int]) -> None:
    await api.put("pods", pod("a", IPS[0], VLLM))
    fleet = Fleet(api, tmp_path, selector={"matchLabels": VLLM}, target_ports=[engines[1]])
    await fleet.manager.start()
    await fleet.source.start()
    try:
        await fleet.until(lambda: fleet.ids() == {f"a:{engines[1]}"}, "the selected pod")
        assert fleet.source.owner == "kubernetes:ns/app=vllm"
        assert not api.watches("inferencepools")
    finally:
        await fleet.source.stop()
        await fleet.manager.stop()


def _pod_lists(api: FakeKubeApi) -> int:
    return sum(1 for path, q in api.requests if path.endswith("/pods") and not q.get("watch"))


@pytest.mark.parametrize("kubernetes, message", [
    ({"inference_pool": "p", "selector": {"matchLabels": {"a": "b"}}}, "not both"),
    ({"selector": {"matchLabels": {"a": "b"}}}, "needs target_ports"),
    ({"inference_pool": "p", "target_ports": [8000]}, "come from the InferencePool"),
    ({"inference_pool": "p", "watch_timeout_secs": 0}, "greater than or equal"),
])
def test_settings_errors_name_the_key(tmp_path: Path, kubernetes: dict[str, Any],
                                      message: str) -> None:
    path = tmp_path / "picker.yaml"
    import yaml

    path.write_text(yaml.safe_dump({"discovery": {"kubernetes": kubernetes}}))
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    assert caught.value.key.startswith("discovery.kubernetes")
    assert message in str(caught.value)


async def test_ready_waits_for_the_first_sync(api: FakeKubeApi, tmp_path: Path,
                                              engines: tuple[int, int]) -> None:
    import httpx

    from picker.config import PickerConfig
    from picker.runtime import PickerRuntime

    await api.put("inferencepools", pool("pool", VLLM, [engines[0]]))
    await api.put("pods", pod("a", IPS[0], VLLM))
    api.forbidden = {"pods"}
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(api.kubeconfig())
    runtime = PickerRuntime(PickerConfig.model_validate({
        "admin": {"host": "127.0.0.1", "port": 0},
        "discovery": {"kubernetes": {"namespace": "ns", "inference_pool": "pool",
                                     "kubeconfig": str(kubeconfig)}}}))
    await runtime.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{runtime.admin_port}") as c:
            first = await c.get("/ready")
            assert (first.status_code, first.json()["status"]) == (503, "syncing")
            api.forbidden = set()
            deadline = time.monotonic() + 8
            while (await c.get("/ready")).status_code != 200:
                assert time.monotonic() < deadline, "never ready after the sync"
                await asyncio.sleep(0.05)
        assert runtime.discovery_synced
    finally:
        await runtime.stop()


async def test_the_pools_inference_objectives_are_followed(
        api: FakeKubeApi, tmp_path: Path, engines: tuple[int, int]) -> None:
    await api.put("inferencepools", pool("pool", VLLM, [engines[0]]))
    await api.put("inferenceobjectives", objective("critical", "pool", 10))
    await api.put("inferenceobjectives", objective("plain", "pool", None))  # unset: 0
    await api.put("inferenceobjectives", objective("elsewhere", "other-pool", 99))
    objectives = Objectives({"configured": 5, "critical": 1})
    fleet = Fleet(api, tmp_path, inference_pool="pool", objectives=objectives)
    await fleet.manager.start()
    await fleet.source.start()
    try:
        await fleet.until(lambda: objectives.priority("critical") == 10, "the objectives")
        assert [objectives.priority(name) for name in ("plain", "elsewhere", "configured")] \
            == [0, 0, 5]
        await api.put("inferenceobjectives", objective("critical", "pool", -3))
        await fleet.until(lambda: objectives.priority("critical") == -3, "the change")
        await api.delete("inferenceobjectives", "critical")
        # Gone from the cluster: the configuration's value again.
        await fleet.until(lambda: objectives.priority("critical") == 1, "the deletion")
    finally:
        await fleet.source.stop()
        await fleet.manager.stop()
