"""LiteLLM deployments -> picker workers, followed as the model list changes, through the
worker manager (the one writer of membership) under the owner `litellm`."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from typing import Any

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from litellm_plugin.deployments import OWNER, DeploymentSource, engine_url  # noqa: E402
from picker.errors import WorkerConflict  # noqa: E402
from picker.fleet.manager import WorkerManager, WorkerPatch  # noqa: E402
from picker.fleet.registry import WorkerRegistry  # noqa: E402
from picker.fleet.served_models import DiscoverySettings  # noqa: E402
from picker.fleet.worker_spec import WorkerSpec  # noqa: E402


def deployment(dep_id: str, group: str, api_base: str | None) -> dict[str, object]:
    params = {"model": "hosted_vllm/x", **({"api_base": api_base} if api_base else {})}
    return {"model_name": group, "litellm_params": params, "model_info": {"id": dep_id}}


class Followed:
    """A source over a model list the test edits, writing through a real manager."""

    def __init__(self) -> None:
        self.workers = WorkerRegistry()
        self.manager = WorkerManager(self.workers, DiscoverySettings())
        self.listed: list[Mapping[str, Any]] = []
        self.source = DeploymentSource(lambda: self.listed, "the test's")
        self.source.attach(self.manager)

    async def follow(self, deployments: list[dict[str, object]]) -> None:
        """The model list is now `deployments`, and a call met them."""
        self.listed = deployments
        if not self.source.synced:
            await self.source.start()
            return
        catching_up = self.source.catch_up(deployments)
        if catching_up is not None:
            await asyncio.wrap_future(catching_up)


@pytest.fixture
async def followed() -> Any:
    fleet = Followed()
    yield fleet
    await fleet.source.stop()


def test_engine_url_drops_the_api_path() -> None:
    assert engine_url("http://h:8000/v1") == "http://h:8000"
    assert engine_url("h:8000/v1/") == "http://h:8000"


async def test_sync_adds_merges_and_removes(followed: Followed) -> None:
    await followed.follow([
        deployment("d1", "chat", "http://a:1/v1"), deployment("d2", "code", "http://a:1/v1"),
        deployment("d3", "chat", "http://b:1/v1"), deployment("d4", "gpt", None)])
    source = followed.source
    workers = {w.url: w for w in followed.workers.workers()}
    assert set(workers) == {"http://a:1", "http://b:1"}
    assert workers["http://a:1"].spec.models == ["chat", "code"]  # one engine, one load count
    assert source.worker_id({"model_info": {"id": "d2"}}) == source.worker_id(
        {"model_info": {"id": "d1"}})
    assert source.worker_id({"model_info": {"id": "d4"}}) is None  # hosted: left to LiteLLM
    # A call meeting only d3 after d1, d2 and d4 were deleted: it did not meet what changed,
    # so the source catches up on its own schedule; here, the next time a call meets news.
    await followed.follow([deployment("d3", "chat", "http://b:1/v1"),
                           deployment("d5", "chat", "http://c:1/v1")])
    assert sorted(w.url for w in followed.workers.workers()) == ["http://b:1", "http://c:1"]
    assert source.worker_id({"model_info": {"id": "d1"}}) is None


def test_engine_url_is_the_registrys_spelling() -> None:
    assert engine_url("HTTP://Engine.Local/v1") == "http://engine.local:80"
    assert engine_url("https://h/v1") == "https://h:443"


async def test_resync_keeps_a_worker_whose_api_base_is_spelled_differently(
        followed: Followed) -> None:
    """A later sync must find the worker again, not replace it and lose its in-flight count."""
    first = deployment("d1", "chat", "http://Engine.local/v1")
    await followed.follow([first])
    (worker,) = followed.workers.workers()
    followed.workers.acquire(worker)
    await followed.follow([first, deployment("d2", "code", "http://b:1/v1")])
    assert followed.workers.get_by_url("http://engine.local:80") is worker
    assert worker.in_flight == 1


async def test_a_worker_is_named_by_the_operators_id_or_by_its_address(
        followed: Followed) -> None:
    """Without model_info.id, LiteLLM's Router makes one up (a sha256 of the params): the
    worker then goes by the engine's host:port, not 64 hex digits."""
    from litellm import Router

    router = Router(model_list=[
        {"model_name": "chat", "litellm_params": {"model": "hosted_vllm/x",
                                                  "api_base": "http://10.0.0.7:8000/v1"}},
        {"model_name": "chat", "litellm_params": {"model": "hosted_vllm/x",
                                                  "api_base": "http://10.0.0.8:8000/v1"},
         "model_info": {"id": "engine-b"}},
    ])
    generated = router.model_list[0]["model_info"]["id"]
    assert len(generated) == 64  # what the pin above is about
    await followed.follow(router.model_list)
    assert sorted(w.id for w in followed.workers.workers()) == ["10.0.0.7:8000", "engine-b"]
    assert followed.source.worker_id(router.model_list[0]) == "10.0.0.7:8000"


async def test_an_empty_api_key_is_no_key(followed: Followed) -> None:
    await followed.follow([{"model_name": "chat", "model_info": {"id": "d1"}, "litellm_params": {
        "model": "hosted_vllm/x", "api_base": "http://a:1/v1", "api_key": ""}}])
    (worker,) = followed.workers.workers()
    assert worker.spec.api_key is None


async def test_the_deployments_workers_are_litellms_not_the_admin_apis(
        followed: Followed) -> None:
    """One owner per worker: the admin API cannot change or take what LiteLLM's model list
    holds (the next sync would undo it), and LiteLLM cannot take an API worker's address."""
    await followed.follow([deployment("d1", "chat", "http://a:1/v1")])
    (worker,) = followed.workers.workers()
    assert followed.manager.declared_in(worker) == OWNER
    with pytest.raises(WorkerConflict, match=OWNER):
        await followed.manager.change(worker.id, WorkerPatch(priority=3))
    await followed.manager.start()
    try:
        with pytest.raises(WorkerConflict, match="already registered"):
            await followed.manager.register(WorkerSpec(url="http://a:1", models=["chat"]))
    finally:
        await followed.manager.stop()
