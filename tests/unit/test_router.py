"""Router.pick and Lease: the one core call both adapters make."""

from __future__ import annotations

import json

import pytest

from picker.circuit import CircuitSettings
from picker.errors import InvalidRequest, ModelNotFound, NoHealthyWorker
from picker.policies import create_policy
from picker.registry import WorkerRegistry
from picker.request import Api, RoutingRequest
from picker.router import Router
from picker.telemetry import PickerMetrics
from picker.workers import WorkerSpec


def router(*specs: WorkerSpec, policy: str = "round_robin") -> Router:
    registry = WorkerRegistry(specs)
    return Router(registry, create_policy(policy), PickerMetrics(registry))


def req(model: str = "m") -> RoutingRequest:
    return RoutingRequest(model=model, api=Api.CHAT)


def sample(r: Router, line_start: str) -> float:
    for line in r.metrics.render().decode().splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_pick_takes_a_slot_and_release_counts_once() -> None:
    r = router(WorkerSpec(url="a:1", id="a", models=["m"]))
    lease = r.pick(req())
    assert lease.worker.in_flight == 1 and lease.open
    assert lease.release("completed") is True
    assert lease.release("cancelled") is False
    assert lease.worker.in_flight == 0 and not lease.open
    assert sample(r, 'llm_picker_requests_total{outcome="completed"}') == 1
    assert sample(r, 'llm_picker_requests_total{outcome="cancelled"}') == 0
    assert sample(r, 'llm_picker_decisions_total{policy="round_robin",worker="a"}') == 1


def test_unknown_model_is_404_naming_the_model() -> None:
    r = router(WorkerSpec(url="a:1", models=["m"]))
    with pytest.raises(ModelNotFound) as caught:
        r.pick(req("gpt-9"))
    assert caught.value.status == 404 and caught.value.param == "model"
    assert "gpt-9" in caught.value.message


@pytest.mark.parametrize("flag", ["healthy", "draining"])
def test_no_routable_worker_is_503(flag: str) -> None:
    r = router(WorkerSpec(url="a:1", models=["m"]))
    worker = r.workers.workers()[0]
    setattr(worker, flag, flag == "draining")
    with pytest.raises(NoHealthyWorker) as caught:
        r.pick(req())
    assert caught.value.status == 503


def test_only_routable_workers_reach_the_policy() -> None:
    r = router(*(WorkerSpec(url=f"a:{i}", id=f"w{i}", models=["m"]) for i in range(1, 4)))
    r.workers.workers()[1].healthy = False
    picked = {r.pick(req()).worker.id for _ in range(10)}
    assert picked == {"w1", "w3"}


def test_reject_counts_by_code() -> None:
    r = router(WorkerSpec(url="a:1"))
    r.reject(InvalidRequest("bad"))
    assert sample(r, 'llm_picker_rejections_total{code="invalid_request"}') == 1
    assert sample(r, 'llm_picker_requests_total{outcome="rejected"}') == 1


def test_error_json_is_openai_shaped() -> None:
    error = json.loads(ModelNotFound("nope", param="model").to_json())["error"]
    assert error == {"message": "nope", "type": "not_found_error", "code": "model_not_found",
                     "param": "model"}


def test_upstream_errors_open_the_circuit_and_stop_routing_there() -> None:
    r = router(WorkerSpec(url="a:1", id="a", models=["m"]),
               WorkerSpec(url="b:1", id="b", models=["m"]))
    bad = r.workers.get("a")
    assert bad is not None
    for _ in range(CircuitSettings().failure_threshold):
        lease = r.pick(req())
        while lease.worker is not bad:
            lease.release("completed")
            lease = r.pick(req())
        lease.release("upstream_error")
    assert {r.pick(req()).worker.id for _ in range(6)} == {"b"}
