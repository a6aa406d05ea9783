"""Configuration reload through WorkerManager: the real ConfigReloader reading a real file,
engines answering on loopback. The file's workers take the admin API's path (discovery,
data-parallel ranks, drain), and the file and the API each keep what they own."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from picker.admin.api import create_admin_app
from picker.config import PickerConfig, load_config
from picker.fleet.config_follow import ConfigReloader
from picker.fleet.served_models import DiscoverySettings
from picker.routing.request import Api, RoutingRequest
from picker.runtime import PickerRuntime
from tests.http_stub import StubServer

FAST = DiscoverySettings(attempt_timeout_secs=0.5, backoff_initial_secs=0.01,
                         backoff_max_secs=0.02)
CHAT = RoutingRequest(model="m", api=Api.CHAT)


@pytest.fixture
def sglang() -> Iterator[StubServer]:
    """A data-parallel SGLang engine (dp_size 2) as discovery sees it."""
    stub = StubServer({"/health": {}, "/v1/models": {"data": [{"id": "m"}]},
                       "/get_model_info": {}, "/get_server_info": {"dp_size": 2}}, status=404)
    yield stub
    stub.close()


class Picker:
    """A runtime (not started), its admin API and a reloader following `path`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        config = load_config(path)
        self.router = PickerRuntime(config.model_copy(update={"discovery": FAST}))
        self.manager = self.router.manager
        self.reloader = ConfigReloader(path, {}, config, self.manager, self.router.metrics,
                                       poll_secs=3600, drain_timeout_secs=5)
        self.admin = httpx.AsyncClient(base_url="http://admin", transport=httpx.ASGITransport(
            app=create_admin_app(self.router)))

    def write(self, workers: list[dict[str, Any]]) -> None:
        self.path.write_text(yaml.safe_dump({"workers": workers}))

    def ids(self) -> list[str]:
        return sorted(w.id for w in self.router.registry.workers())


@pytest.fixture
async def picker(tmp_path: Path) -> AsyncIterator[Picker]:
    path = tmp_path / "picker.yaml"
    path.write_text(yaml.safe_dump({"workers": [
        {"url": "http://127.0.0.1:1", "id": "a", "models": ["m"]}]}))
    p = Picker(path)
    await p.manager.start()
    await p.reloader.start()
    yield p
    await p.reloader.stop()
    await p.admin.aclose()
    await p.manager.stop()


def rank_specs(router: PickerRuntime) -> list[dict[str, Any]]:
    return sorted((w.spec.model_dump(mode="json") for w in router.registry.workers()),
                  key=lambda d: d["url"])


async def test_reload_of_a_dp_worker_expands_its_ranks_like_post(
    picker: Picker, sglang: StubServer
) -> None:
    declared = {"url": sglang.url, "id": "e", "runtime_type": "sglang"}
    picker.write([declared])
    await picker.reloader.reload()
    assert picker.ids() == ["e@0", "e@1"]

    posted = PickerRuntime(PickerConfig(discovery=FAST))
    manager = posted.manager
    await manager.start()
    async with httpx.AsyncClient(base_url="http://admin", transport=httpx.ASGITransport(
            app=create_admin_app(posted))) as admin:
        assert (await admin.post("/workers", json=declared)).status_code == 201
    await manager.stop()
    assert rank_specs(picker.router) == rank_specs(posted)


async def test_a_dp_worker_declared_at_start_up_is_expanded(tmp_path: Path) -> None:
    """The runtime registers the file's specs one worker per rank, as a POST does (it used to
    register them as written until the file's first reload); claiming them keeps the ranks."""
    path = tmp_path / "picker.yaml"
    path.write_text(yaml.safe_dump({"workers": [
        {"url": "http://127.0.0.1:1", "id": "e", "models": ["m"], "dp_size": 3}]}))
    p = Picker(path)
    assert p.ids() == ["e@0", "e@1", "e@2"]
    await p.manager.start()
    await p.reloader.start()
    assert p.ids() == ["e@0", "e@1", "e@2"]
    await p.reloader.stop()
    await p.manager.stop()


async def test_a_worker_whose_id_changes_is_drained_not_dropped(picker: Picker) -> None:
    old = picker.router.registry.get("a")
    assert old is not None
    lease = picker.router.routing.route_sync(CHAT)
    assert lease.worker is old
    picker.write([{"url": "http://127.0.0.1:1", "id": "renamed", "models": ["m"]}])
    reload = asyncio.create_task(picker.reloader.reload())
    await asyncio.sleep(0.3)
    # In flight: the old record stays (its in-flight count is the engine's real load), takes
    # no new requests, and the new id waits for it.
    assert picker.router.registry.get("a") is old and old.draining and not old.routable
    assert picker.router.registry.get("renamed") is None
    lease.release("completed")
    await asyncio.wait_for(reload, 5)
    assert picker.ids() == ["renamed"]
    assert picker.router.registry.get("a") is None


async def test_patchable_changes_in_the_file_apply_in_place(picker: Picker) -> None:
    before = picker.router.registry.get("a")
    picker.write([{"url": "http://127.0.0.1:1", "id": "a", "models": ["m"], "priority": 80}])
    await picker.reloader.reload()
    after = picker.router.registry.get("a")
    assert after is before and after is not None and after.spec.priority == 80


async def test_the_file_owns_its_workers_and_the_api_its_own(picker: Picker) -> None:
    # The API cannot undo the file (the next reload would silently put it back).
    refused = await picker.admin.delete("/workers/a")
    assert refused.status_code == 409 and str(picker.path) in refused.json()["error"]["message"]
    assert (await picker.admin.patch("/workers/a", json={"priority": 1})).status_code == 409
    # A worker the API added, and its patched priority, survive an unrelated edit of the file.
    posted = await picker.admin.post("/workers", json={"url": "http://127.0.0.1:2", "id": "b",
                                                       "models": ["m"]})
    assert posted.status_code == 202  # nothing answers there: unhealthy until health checks
    assert (await picker.admin.patch("/workers/b", json={"priority": 90})).status_code == 200
    picker.write([{"url": "http://127.0.0.1:1", "id": "a", "models": ["m"], "cost": 2}])
    await picker.reloader.reload()
    b = picker.router.registry.get("b")
    assert picker.ids() == ["a", "b"] and b is not None and b.spec.priority == 90
    # Removing a worker from the file removes it (drained): the file owns it.
    picker.write([])
    await picker.reloader.reload()
    assert picker.ids() == ["b"]


async def test_settings_are_compared_with_the_running_ones(
        picker: Picker, caplog: pytest.LogCaptureFixture) -> None:
    """A changed policy was reported once, then a second reload compared against the edited
    file and said nothing, though the running policy still differed."""
    workers = [{"url": "http://127.0.0.1:1", "id": "a", "models": ["m"]}]

    async def reload(**settings: object) -> bool:
        picker.path.write_text(yaml.safe_dump({"workers": workers, **settings}))
        caplog.clear()
        await picker.reloader.reload()
        return "apply on restart" in caplog.text

    assert await reload(policy="least_load")
    assert "changes to policy apply on restart" in caplog.text  # names what waits
    assert await reload(policy="least_load")  # still not what runs
    assert not await reload()  # back to what runs


async def test_a_reload_cannot_bring_in_a_keyed_worker_the_running_port_would_leak(
        picker: Picker, caplog: pytest.LogCaptureFixture) -> None:
    """The new file's own `extproc` settings wait for a restart: a key it adds (with the
    opt-out beside it) would otherwise go out on the running plaintext ext_proc port (review
    finding). The file path refuses it as the admin API does."""
    picker.path.write_text(yaml.safe_dump({
        "extproc": {"allow_unauthenticated_keys": True},
        "workers": [{"url": "http://127.0.0.1:1", "id": "a", "models": ["m"]},
                    {"url": "http://127.0.0.1:2", "id": "k", "models": ["m"],
                     "api_key": "sk-secret-key"}]}))
    await picker.reloader.reload()
    assert picker.ids() == ["a"]
    refused = [r.getMessage() for r in caplog.records if "api_key" in r.getMessage()]
    assert refused and "extproc.tls" in refused[0] and "sk-secret-key" not in caplog.text


async def test_an_empty_file_is_rejected_not_read_as_no_workers(picker: Picker) -> None:
    """`sed ... > picker.yaml` truncates the file before writing it: a reload that read it
    then would drain every worker the file declares. Empty (or comments only), it is rejected;
    `workers: []` still removes them."""
    for empty in ("", "# being rewritten\n"):
        picker.path.write_text(empty)
        await picker.reloader.reload()
        assert picker.ids() == ["a"]
    assert picker.router.metrics.registry.get_sample_value(
        "llm_picker_config_reloads_total", {"result": "rejected"}) == 2
    picker.path.write_text("workers: []\n")
    await picker.reloader.reload()
    assert picker.ids() == []


async def test_a_reload_says_how_many_of_its_workers_were_not_applied(
        picker: Picker, caplog: pytest.LogCaptureFixture) -> None:
    """A worker the file declares under an id the admin API's worker holds is refused; the
    reload still applies the rest, and its summary says one was not, not 'N workers'."""
    posted = await picker.admin.post("/workers", json={"url": "http://127.0.0.1:3", "id": "c",
                                                       "models": ["m"]})
    assert posted.status_code in (201, 202)
    picker.write([{"url": "http://127.0.0.1:1", "id": "a", "models": ["m"]},
                  {"url": "http://127.0.0.1:2", "id": "c", "models": ["m"]}])
    await picker.reloader.reload()
    summary = caplog.records[-1].getMessage()
    assert "1 of its 2 workers applied, 1 not" in summary, summary
    assert picker.ids() == ["a", "c"]
