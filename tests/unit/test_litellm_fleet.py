"""LiteLLM deployments -> picker workers, followed as the model list changes."""

from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from litellm_plugin.fleet import DeploymentFleet, engine_url  # noqa: E402
from picker.fleet.registry import WorkerRegistry  # noqa: E402


def deployment(dep_id: str, group: str, api_base: str | None) -> dict[str, object]:
    params = {"model": "hosted_vllm/x", **({"api_base": api_base} if api_base else {})}
    return {"model_name": group, "litellm_params": params, "model_info": {"id": dep_id}}


def test_engine_url_drops_the_api_path() -> None:
    assert engine_url("http://h:8000/v1") == "http://h:8000"
    assert engine_url("h:8000/v1/") == "http://h:8000"


def test_sync_adds_merges_and_removes() -> None:
    fleet = DeploymentFleet(WorkerRegistry())
    fleet.sync([deployment("d1", "chat", "http://a:1/v1"), deployment("d2", "code", "http://a:1/v1"),
                deployment("d3", "chat", "http://b:1/v1"), deployment("d4", "gpt", None)])
    workers = {w.url: w for w in fleet.workers.workers()}
    assert set(workers) == {"http://a:1", "http://b:1"}
    assert workers["http://a:1"].spec.models == ["chat", "code"]  # one engine, one load count
    assert fleet.worker_id({"model_info": {"id": "d2"}}) == fleet.worker_id(
        {"model_info": {"id": "d1"}})
    assert fleet.worker_id({"model_info": {"id": "d4"}}) is None  # hosted: left to LiteLLM
    fleet.sync([deployment("d3", "chat", "http://b:1/v1")])
    assert [w.url for w in fleet.workers.workers()] == ["http://b:1"]
    assert fleet.worker_id({"model_info": {"id": "d1"}}) is None


def test_engine_url_is_the_registrys_spelling() -> None:
    assert engine_url("HTTP://Engine.Local/v1") == "http://engine.local:80"
    assert engine_url("https://h/v1") == "https://h:443"


def test_resync_keeps_a_worker_whose_api_base_is_spelled_differently() -> None:
    """A later sync must find the worker again, not replace it and lose its in-flight count."""
    fleet = DeploymentFleet(WorkerRegistry())
    first = deployment("d1", "chat", "http://Engine.local/v1")
    fleet.sync([first])
    (worker,) = fleet.workers.workers()
    fleet.workers.acquire(worker)
    fleet.sync([first, deployment("d2", "code", "http://b:1/v1")])
    assert fleet.workers.get_by_url("http://engine.local:80") is worker
    assert worker.in_flight == 1


def test_a_worker_is_named_by_the_operators_id_or_by_its_address() -> None:
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
    fleet = DeploymentFleet(WorkerRegistry())
    fleet.sync(router.model_list)
    assert sorted(w.id for w in fleet.workers.workers()) == ["10.0.0.7:8000", "engine-b"]
    assert fleet.worker_id(router.model_list[0]) == "10.0.0.7:8000"


def test_an_empty_api_key_is_no_key() -> None:
    fleet = DeploymentFleet(WorkerRegistry())
    fleet.sync([{"model_name": "chat", "model_info": {"id": "d1"}, "litellm_params": {
        "model": "hosted_vllm/x", "api_base": "http://a:1/v1", "api_key": ""}}])
    (worker,) = fleet.workers.workers()
    assert worker.spec.api_key is None
