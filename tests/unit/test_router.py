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


def prefix_router(policy: str = "prefix_cache") -> Router:
    from picker.prefix.producer import PrefixProducer, PrefixSettings

    registry = WorkerRegistry(WorkerSpec(url=f"a:{i}", id=f"w{i}", models=["m"])
                              for i in range(1, 5))
    return Router(registry, create_policy(policy), PickerMetrics(registry),
                  PrefixProducer(PrefixSettings(enabled=True, block_size=16)))


def chat_req(system: str, question: str, **headers: str) -> RoutingRequest:
    return RoutingRequest(model="m", api=Api.CHAT, prompt_text=system + question,
                          headers=headers)


@pytest.mark.parametrize("policy", ["prefix_cache", "cache_aware"])
def test_shared_prefix_groups_stick_to_one_worker(policy: str) -> None:
    r = prefix_router(policy)
    systems = [f"{g}: system prompt of group {g} " * 20 for g in range(4)]
    homes: dict[int, set[str]] = {g: set() for g in range(4)}
    for i in range(40):  # leases held: in-flight load builds up as in a busy fleet
        g = i % 4
        homes[g].add(r.pick(chat_req(systems[g], f"question {i}")).worker.id)
    assert all(len(h) == 1 for h in homes.values()), homes
    assert len(set().union(*homes.values())) == 4  # first picks went to idle workers


def test_removed_worker_leaves_the_index() -> None:
    r = prefix_router()
    lease = r.pick(chat_req("x" * 64, "q"))
    lease.release("completed")
    r.workers.remove(lease.worker.url)
    assert r.prefix is not None
    assert r.prefix.index.match([], []).matched == {}
    assert lease.worker.id not in {r.pick(chat_req("x" * 64, "q")).worker.id for _ in range(3)}


def test_strategy_header_overrides_and_unknown_is_400() -> None:
    r = prefix_router("prefix_cache")
    lease = r.pick(chat_req("s", "q", **{"x-routing-strategy": "round_robin"}))
    line = f'llm_picker_decisions_total{{policy="round_robin",worker="{lease.worker.id}"}}'
    assert sample(r, line) == 1
    with pytest.raises(InvalidRequest) as caught:
        r.pick(chat_req("s", "q", **{"x-routing-strategy": "fastest"}))
    assert caught.value.status == 400 and caught.value.param == "x-routing-strategy"
    plain = router(WorkerSpec(url="a:1", models=["m"]))
    with pytest.raises(InvalidRequest, match="prefix index"):
        plain.pick(chat_req("s", "q", **{"x-routing-strategy": "cache_aware"}))


def test_prefix_metrics_report_match_buckets_and_index_size() -> None:
    r = prefix_router()
    for _ in range(2):
        r.pick(chat_req("p" * 320, "")).release("completed")
    text = r.metrics.render().decode()
    assert ('llm_picker_routing_decisions_total{match_percent_bucket="0",model="m",'
            'policy="prefix_cache"} 1.0') in text
    assert ('llm_picker_routing_decisions_total{match_percent_bucket="100",model="m",'
            'policy="prefix_cache"} 1.0') in text
    assert any(line.startswith("llm_picker_prefix_index_blocks{") and line.endswith(" 20.0")
               for line in text.splitlines())


@pytest.mark.parametrize(("rate", "bucket"), [(None, "none"), (0, "0"), (0.01, "1-25"),
                                              (0.5, "26-50"), (0.75, "51-75"), (0.99, "76-99"),
                                              (1.0, "100")])
def test_match_bucket(rate: float | None, bucket: str) -> None:
    from picker.telemetry import match_bucket

    assert match_bucket(rate) == bucket


def test_imbalance_and_indexer_status_metrics() -> None:
    r = prefix_router()
    r.workers.workers()[0].in_flight = 20
    r.pick(chat_req("s", "q")).release("completed")
    text = r.metrics.render().decode()
    assert "llm_picker_load_imbalance_total 1.0" in text
    assert 'llm_picker_prefix_indexer_status{kind="approximate",model="m"} 1.0' in text
