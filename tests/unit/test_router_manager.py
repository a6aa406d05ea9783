"""The router and the router manager on their own: a registry and a config, no runtime."""

from __future__ import annotations

from typing import Any

import pytest

from picker.config import PickerConfig
from picker.errors import ModelNotFound, NoHealthyWorker
from picker.fleet.registry import WorkerRegistry
from picker.fleet.worker_spec import WorkerSpec
from picker.observe.metrics import PickerMetrics
from picker.routing.request import Api, RoutingRequest
from picker.routing.router import Router
from picker.routing.router_manager import PdRouters, RouterManager

REQ = RoutingRequest(model="m", api=Api.CHAT)


def fleet(*specs: dict[str, Any]) -> WorkerRegistry:
    workers = WorkerRegistry()
    for spec in specs:
        workers.add(WorkerSpec.model_validate({"models": ["m"], "kv_connector": "llm-d", **spec}))
    return workers


def manager(workers: WorkerRegistry, **settings: Any) -> RouterManager:
    config = PickerConfig.model_validate({"policy": {"name": "round_robin"}, **settings})
    return RouterManager(workers, config, PickerMetrics(workers), None, None)


def test_a_router_chooses_among_routable_workers_and_names_its_policy() -> None:
    workers = fleet({"url": "http://a:1", "id": "a"}, {"url": "http://b:1", "id": "b"})
    router = Router(workers, "round_robin", {}, PickerMetrics(workers))
    workers.set_healthy(workers.get("a"), False)  # type: ignore[arg-type]
    picks = {router.choose(REQ).worker.id for _ in range(4)}
    assert picks == {"b"} and router.choose(REQ).policy == "round_robin"
    with pytest.raises(NoHealthyWorker):
        router.choose(REQ, allowed={"a"})


def test_a_routers_pool_bounds_its_choices_and_its_fallbacks() -> None:
    workers = fleet({"url": "http://a:1", "id": "a"}, {"url": "http://b:1", "id": "b"},
                    {"url": "http://c:1", "id": "c"})
    router = Router(workers, "round_robin", {}, PickerMetrics(workers),
                    pool=lambda w: w.id != "c")
    chosen = router.choose(REQ).worker
    assert chosen.id in {"a", "b"}
    assert [w.id for w in router.fallbacks(REQ, chosen, 5)] == list({"a", "b"} - {chosen.id})


def test_without_igw_one_router_serves_everything() -> None:
    workers = fleet({"url": "http://a:1", "id": "a"})
    routers = manager(workers)
    assert routers.select(REQ) is routers.default
    assert routers.describe()[0]["router"] == "http-regular"


def test_with_igw_routers_follow_their_workers() -> None:
    workers = fleet({"url": "http://r:1", "id": "r"})
    routers = manager(workers, enable_igw=True)
    regular = routers.select(REQ)
    assert isinstance(regular, Router)
    workers.add(WorkerSpec.model_validate({"url": "http://p:1", "id": "p", "models": ["m"],
                                           "worker_type": "prefill", "kv_connector": "llm-d"}))
    assert routers.select(REQ) is regular  # a prefill alone is not a pair
    workers.add(WorkerSpec.model_validate({"url": "http://d:1", "id": "d", "models": ["m"],
                                           "worker_type": "decode", "kv_connector": "llm-d"}))
    assert isinstance(routers.select(REQ), PdRouters)  # a complete pair is preferred
    assert {view["router"] for view in routers.describe()} == {"http-regular", "http-pd"}
    workers.remove("http://p:1")
    workers.remove("http://d:1")
    assert {view["router"] for view in routers.describe()} == {"http-regular"}


def test_with_igw_what_is_missing_is_named() -> None:
    routers = manager(fleet({"url": "http://p:1", "id": "p", "worker_type": "prefill"}),
                      enable_igw=True)
    with pytest.raises(ModelNotFound):
        routers.select(RoutingRequest(model="other", api=Api.CHAT))
    with pytest.raises(NoHealthyWorker, match="prefill: 1 routable of 1"):
        routers.select(REQ)
