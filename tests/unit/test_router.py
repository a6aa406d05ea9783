"""PickerRuntime.route and Lease: the one core call both adapters make, and the Router's
decision behind it."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence

import pytest
from prometheus_client.parser import text_string_to_metric_families

from picker.config import PickerConfig
from picker.errors import (
    BodyTooLarge,
    InvalidRequest,
    ModelNotFound,
    NoHealthyWorker,
    Overloaded,
    ProxyMisconfigured,
    RequestError,
    UnsupportedMediaType,
    UnsupportedPath,
)
from picker.fleet.circuit import CircuitSettings
from picker.fleet.registry import Worker
from picker.fleet.worker_spec import WorkerSpec
from picker.policies import POLICIES, PolicyDescriptor, PolicyParams
from picker.routing.request import Api, RoutingRequest
from picker.runtime import PickerRuntime


def router(*specs: WorkerSpec, policy: str = "round_robin", **settings: object) -> PickerRuntime:
    """A runtime, not started: routing needs none of its background services."""
    return PickerRuntime(PickerConfig.model_validate(
        {"workers": list(specs), "policy": {"name": policy}, **settings}))


def req(model: str = "m") -> RoutingRequest:
    return RoutingRequest(model=model, api=Api.CHAT)


def sample(r: PickerRuntime, line_start: str) -> float:
    for line in r.metrics.render().decode().splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def samples(r: PickerRuntime, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Every sample of one metric, keyed by its sorted labels."""
    return {tuple(sorted(s.labels.items())): s.value
            for family in text_string_to_metric_families(r.metrics.render().decode())
            for s in family.samples if s.name == name}


class Recording:
    """A policy that remembers what it was offered and picks the last candidate."""

    name = "recording"

    def __init__(self) -> None:
        self.offered: list[list[str]] = []

    def pick(self, request: RoutingRequest, candidates: Sequence[Worker]) -> Worker:
        self.offered.append([w.id for w in candidates])
        return candidates[-1]


RecordingFactory = Callable[..., tuple[PickerRuntime, Recording]]


@pytest.fixture
def recording_router(monkeypatch: pytest.MonkeyPatch) -> RecordingFactory:
    """Runtimes whose policy is a Recording, declared like a built-in one."""
    def build(*specs: WorkerSpec) -> tuple[PickerRuntime, Recording]:
        policy = Recording()
        monkeypatch.setitem(POLICIES, "recording",  # type: ignore[arg-type]
                            PolicyDescriptor("recording", PolicyParams, lambda _: policy))
        return router(*specs, policy="recording"), policy
    return build


def fleet(n: int, **fields: object) -> list[WorkerSpec]:
    return [WorkerSpec.model_validate({"url": f"a:{i}", "id": f"w{i}", "models": ["m"], **fields})
            for i in range(1, n + 1)]


def test_pick_takes_a_slot_and_release_counts_once() -> None:
    r = router(WorkerSpec(url="a:1", id="a", models=["m"]))
    lease = r.routing.route_sync(req())
    assert lease.worker is r.registry.get("a")
    assert lease.worker.in_flight == 1 and lease.open and r.leases.active == 1
    assert r.registry.stats()["total_load"] == 1
    assert lease.release("completed") is True
    assert lease.release("cancelled") is False
    assert lease.release("completed") is False
    assert lease.worker.in_flight == 0 and not lease.open and r.leases.active == 0
    assert r.leases.outcomes == {"completed": 1}
    assert sample(r, 'llm_picker_requests_total{outcome="completed"}') == 1
    assert sample(r, 'llm_picker_requests_total{outcome="cancelled"}') == 0
    assert sample(r, 'llm_picker_decisions_total{policy="round_robin",worker="a"}') == 1


@pytest.mark.parametrize(
    ("prompt", "ahead"),
    [
        ("x" * 4000, 1000.0),  # no prefix index nor measured ratio: 4 characters per token
        ("", 0.0),
    ],
)
def test_a_lease_brings_its_uncached_prompt_to_the_prefill_backlog(prompt: str,
                                                                    ahead: float) -> None:
    from picker.fleet.speed import Observation

    r = router(WorkerSpec(url="a:1", id="w"))
    worker = r.registry.workers()[0]
    r.registry.observe(worker, Observation(prompt_tokens=1000, cached_tokens=0, ttft_secs=1.0))
    lease = r.routing.route_sync(RoutingRequest(model="m", api=Api.CHAT, prompt_text=prompt))
    assert lease.choice.uncached_tokens == ahead
    assert worker.prefill_ahead(time.monotonic()) == pytest.approx(ahead, abs=5.0)
    lease.release("completed")


def test_a_released_lease_takes_its_prompt_out_of_the_prefill_backlog() -> None:
    """However slow the learned prefill rate, an ended request is no longer ahead of anyone
    (issue 35.3); one still open is."""
    from picker.fleet.speed import Observation

    r = router(WorkerSpec(url="a:1", id="w"))
    worker = r.registry.workers()[0]
    r.registry.observe(worker, Observation(prompt_tokens=1000, cached_tokens=0,
                                           ttft_secs=100.0))  # 10 tokens/s
    leases = [r.routing.route_sync(RoutingRequest(model="m", api=Api.CHAT, prompt_text="x" * 4000))
              for _ in range(2)]
    assert worker.prefill_ahead(time.monotonic()) == pytest.approx(2000.0, abs=5.0)
    leases[0].release("completed")
    assert worker.prefill_ahead(time.monotonic()) == pytest.approx(1000.0, abs=5.0)
    leases[1].release("completed")
    assert worker.prefill_ahead(time.monotonic()) == 0.0


def test_a_pairs_decode_worker_has_no_prefill_to_do() -> None:
    from picker.fleet.speed import Observation
    from picker.routing.router import Choice

    r = router(*fleet(2))
    decode, prefill = r.registry.workers()
    for worker in (decode, prefill):
        r.registry.observe(worker, Observation(prompt_tokens=1000, cached_tokens=0,
                                               ttft_secs=1.0))
    r.leases.admit_now()
    lease = r.leases.open(Choice(decode, "round_robin", None, None, 800.0), prefill)
    assert decode.prefill_ahead(time.monotonic()) == 0.0
    assert (decode.in_flight, prefill.in_flight) == (1, 1)
    lease.release("completed")


def test_held_leases_add_up_and_release_to_zero() -> None:
    r = router(*fleet(3))
    leases = [r.routing.route_sync(req()) for _ in range(9)]
    assert [w.in_flight for w in r.registry.workers()] == [3, 3, 3]
    assert r.leases.active == 9
    for lease in leases:
        lease.release("completed")
    assert [w.in_flight for w in r.registry.workers()] == [0, 0, 0]
    assert r.leases.active == 0


def test_racing_releases_count_once() -> None:
    """Stream end, reset and timeout may report the same request's end on different threads."""
    r = router(*fleet(2))
    leases = [r.routing.route_sync(req()) for _ in range(200)]
    results: list[bool] = []

    def release_all(outcome: str) -> None:
        results.extend(lease.release(outcome) for lease in leases)

    threads = [threading.Thread(target=release_all, args=(o,))
               for o in ("completed", "cancelled", "timeout", "completed")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results.count(True) == 200 and len(results) == 800
    assert [w.in_flight for w in r.registry.workers()] == [0, 0]
    assert sum(r.leases.outcomes.values()) == 200 and r.leases.active == 0


@pytest.mark.parametrize(
    ("specs", "model"),
    [
        ((WorkerSpec(url="a:1", models=["m"]),), "gpt-9"),
        ((), "m"),  # no worker at all
        ((WorkerSpec(url="a:1", models=["m"]), WorkerSpec(url="b:1", models=["n"])), "M"),
    ],
)
def test_unknown_model_is_404_naming_the_model(specs: tuple[WorkerSpec, ...],
                                                model: str) -> None:
    r = router(*specs)
    with pytest.raises(ModelNotFound) as caught:
        r.routing.route_sync(req(model))
    error = caught.value
    assert error.status == 404 and error.param == "model" and error.code == "model_not_found"
    assert repr(model) in error.message
    assert r.leases.active == 0  # the admission slot is given back
    assert all(w.in_flight == 0 for w in r.registry.workers())


def test_a_worker_listing_no_models_serves_any_model() -> None:
    r = router(WorkerSpec(url="a:1", id="any"))
    assert r.routing.route_sync(req("whatever-model")).worker.id == "any"


def disable(r: PickerRuntime, worker: Worker, how: str) -> None:
    if how == "unhealthy":
        r.registry.set_healthy(worker, False)
    elif how == "draining":
        r.registry.set_draining(worker)
    else:  # circuit open
        for _ in range(CircuitSettings().failure_threshold):
            r.registry.record_outcome(worker, False)


@pytest.mark.parametrize(
    "hows",
    [("unhealthy",), ("draining",), ("circuit",), ("unhealthy", "draining"),
     ("draining", "circuit", "unhealthy")],
)
def test_no_routable_worker_is_503(hows: tuple[str, ...],
                                   recording_router: RecordingFactory) -> None:
    r, policy = recording_router(*fleet(len(hows)))
    for worker, how in zip(r.registry.workers(), hows, strict=True):
        disable(r, worker, how)
    with pytest.raises(NoHealthyWorker) as caught:
        r.routing.route_sync(req())
    error = caught.value
    assert error.status == 503 and error.code == "no_healthy_worker"
    reasons = {"unhealthy": "unhealthy", "draining": "draining", "circuit": "circuit open"}
    said = ", ".join(f"{hows.count(how)} {reasons[how]}"
                     for how in sorted(set(hows), key=lambda how: reasons[how]))
    assert error.message == f"no routable worker for model 'm' ({said})"
    assert policy.offered == []  # the policy is never asked with nobody to pick
    assert r.leases.active == 0 and all(w.in_flight == 0 for w in r.registry.workers())


@pytest.mark.parametrize(
    ("hows", "offered"),
    [
        ({}, ["w1", "w2", "w3", "w4"]),
        ({"w2": "unhealthy"}, ["w1", "w3", "w4"]),
        ({"w1": "draining", "w4": "circuit"}, ["w2", "w3"]),
        ({"w1": "unhealthy", "w2": "draining", "w3": "circuit"}, ["w4"]),
    ],
)
def test_only_routable_workers_reach_the_policy(hows: dict[str, str], offered: list[str],
                                                recording_router: RecordingFactory) -> None:
    r, policy = recording_router(*fleet(4), WorkerSpec(url="z:1", id="other", models=["n"]))
    for worker_id, how in hows.items():
        worker = r.registry.get(worker_id)
        assert worker is not None
        disable(r, worker, how)
    lease = r.routing.route_sync(req())
    assert policy.offered == [offered]
    assert lease.worker.id == offered[-1]


def test_recovered_worker_is_offered_again(recording_router: RecordingFactory) -> None:
    r, policy = recording_router(*fleet(2))
    worker = r.registry.get("w1")
    assert worker is not None
    r.registry.set_healthy(worker, False)
    r.routing.route_sync(req()).release("completed")
    r.registry.set_healthy(worker, True)
    r.routing.route_sync(req()).release("completed")
    assert policy.offered == [["w2"], ["w1", "w2"]]


def test_allowed_narrows_the_candidates(recording_router: RecordingFactory) -> None:
    r, policy = recording_router(*fleet(3))
    assert r.routers.default.choose(req(), allowed={"w1", "w3"}).worker.id == "w3"
    assert policy.offered == [["w1", "w3"]]
    with pytest.raises(NoHealthyWorker):
        r.routers.default.choose(req(), allowed=set())


def test_decision_and_request_counters() -> None:
    r = router(*fleet(2), policy="round_robin")
    outcomes = ["completed", "completed", "cancelled", "upstream_error", "completed"]
    for outcome in outcomes:
        r.routing.route_sync(req()).release(outcome)
    decisions = samples(r, "llm_picker_decisions_total")
    assert decisions == {(("policy", "round_robin"), ("worker", "w1")): 3,
                         (("policy", "round_robin"), ("worker", "w2")): 2}
    assert samples(r, "llm_picker_requests_total") == {
        (("outcome", "completed"),): 3, (("outcome", "cancelled"),): 1,
        (("outcome", "upstream_error"),): 1}
    assert samples(r, "llm_picker_decision_duration_seconds_count") == {(): 5}
    routed = samples(r, "llm_picker_routing_decisions_total")
    assert routed == {(("match_percent_bucket", "none"), ("model", "m"),
                       ("policy", "round_robin")): 5}


def test_refused_requests_are_not_counted_as_decisions() -> None:
    r = router(WorkerSpec(url="a:1", models=["m"]))
    with pytest.raises(ModelNotFound):
        r.routing.route_sync(req("nope"))
    assert samples(r, "llm_picker_decisions_total") == {}
    assert samples(r, "llm_picker_decision_duration_seconds_count") == {(): 0}


def test_unregistered_model_names_do_not_become_label_values() -> None:
    r = router(WorkerSpec(url="a:1", id="any"), WorkerSpec(url="b:1", id="b", models=["m"]))
    r.routing.route_sync(req("client-invented-name")).release("completed")
    models = {dict(labels)["model"] for labels in samples(r, "llm_picker_routing_decisions_total")}
    assert models == {"other"}


@pytest.mark.parametrize(
    "error",
    [InvalidRequest("bad"), ModelNotFound("x", param="model"), NoHealthyWorker("y"),
     Overloaded("z", retry_after=3), BodyTooLarge("big")],
)
def test_reject_counts_by_code(error: RequestError) -> None:
    r = router(WorkerSpec(url="a:1"))
    r.routing.reject(error)
    r.routing.reject(error)
    assert samples(r, "llm_picker_rejections_total") == {(("code", error.code),): 2}
    assert samples(r, "llm_picker_requests_total") == {(("outcome", "rejected"),): 2}


@pytest.mark.parametrize(
    ("error", "status", "error_type", "code"),
    [
        (InvalidRequest("m"), 400, "invalid_request_error", "invalid_request"),
        (UnsupportedPath("m"), 404, "not_found_error", "unsupported_path"),
        (ModelNotFound("m"), 404, "not_found_error", "model_not_found"),
        (BodyTooLarge("m"), 413, "invalid_request_error", "body_too_large"),
        (UnsupportedMediaType("m"), 415, "invalid_request_error", "unsupported_media_type"),
        (Overloaded("m"), 429, "rate_limit_error", "overloaded"),
        (ProxyMisconfigured("m"), 500, "server_error", "proxy_misconfigured"),
        (NoHealthyWorker("m"), 503, "service_unavailable_error", "no_healthy_worker"),
    ],
)
def test_error_json_is_openai_shaped(error: RequestError, status: int, error_type: str,
                                     code: str) -> None:
    assert error.status == status
    body = json.loads(error.to_json())
    assert body == {"error": {"message": "m", "type": error_type, "code": code}}


def test_error_json_carries_param_and_escapes_the_message() -> None:
    error = ModelNotFound('no "model" \n here', param="model")
    body = json.loads(error.to_json())
    assert body == {"error": {"message": 'no "model" \n here', "type": "not_found_error",
                              "code": "model_not_found", "param": "model"}}
    assert str(error) == error.message


def test_overloaded_tells_when_to_retry() -> None:
    assert Overloaded("busy", retry_after=7).headers() == {"retry-after": "7"}
    assert InvalidRequest("x").headers() == {}


def test_upstream_errors_open_the_circuit_and_stop_routing_there() -> None:
    r = router(WorkerSpec(url="a:1", id="a", models=["m"]),
               WorkerSpec(url="b:1", id="b", models=["m"]))
    bad = r.registry.get("a")
    assert bad is not None
    for _ in range(CircuitSettings().failure_threshold):
        lease = r.routing.route_sync(req())
        while lease.worker is not bad:
            lease.release("completed")
            lease = r.routing.route_sync(req())
        lease.release("upstream_error")
    assert {r.routing.route_sync(req()).worker.id for _ in range(6)} == {"b"}


def prefix_router(policy: str = "prefix_cache") -> PickerRuntime:
    return router(*(WorkerSpec(url=f"a:{i}", id=f"w{i}", models=["m"]) for i in range(1, 5)),
                  policy=policy, prefix={"enabled": True, "block_size": 16})


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
        homes[g].add(r.routing.route_sync(chat_req(systems[g], f"question {i}")).worker.id)
    assert all(len(h) == 1 for h in homes.values()), homes
    assert len(set().union(*homes.values())) == 4  # first picks went to idle workers


def test_removed_worker_leaves_the_index() -> None:
    r = prefix_router()
    lease = r.routing.route_sync(chat_req("x" * 64, "q"))
    lease.release("completed")
    r.registry.remove(lease.worker.url)
    index = r.prefix_index()
    assert index is not None and index.blocks_of(lease.worker.id) == 0
    again = {r.routing.route_sync(chat_req("x" * 64, "q")).worker.id for _ in range(3)}
    assert lease.worker.id not in again


def test_strategy_header_overrides_and_unknown_is_400() -> None:
    r = prefix_router("prefix_cache")
    lease = r.routing.route_sync(chat_req("s", "q", **{"x-routing-strategy": "round_robin"}))
    line = f'llm_picker_decisions_total{{policy="round_robin",worker="{lease.worker.id}"}}'
    assert sample(r, line) == 1
    with pytest.raises(InvalidRequest) as caught:
        r.routing.route_sync(chat_req("s", "q", **{"x-routing-strategy": "fastest"}))
    assert caught.value.status == 400 and caught.value.param == "x-routing-strategy"
    plain = router(WorkerSpec(url="a:1", models=["m"]))
    with pytest.raises(InvalidRequest, match="prefix index"):
        plain.routing.route_sync(chat_req("s", "q", **{"x-routing-strategy": "prefix_cache"}))


def test_prefix_metrics_report_match_buckets_and_index_size() -> None:
    r = prefix_router()
    for _ in range(2):
        r.routing.route_sync(chat_req("p" * 320, "")).release("completed")
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
    from picker.observe.metrics import match_bucket

    assert match_bucket(rate) == bucket


def test_imbalance_and_indexer_status_metrics() -> None:
    r = prefix_router()
    busy = r.registry.workers()[0]
    for _ in range(20):
        r.registry.acquire(busy)
    r.routing.route_sync(chat_req("s", "q")).release("completed")
    text = r.metrics.render().decode()
    assert "llm_picker_load_imbalance_total 1.0" in text
    assert 'llm_picker_prefix_indexer_status{kind="approximate",model="m"} 1.0' in text


def test_a_policy_chosen_per_request_runs_with_its_configured_params() -> None:
    """w1: short engine queue, busy picker; w2 the reverse. Configured weights (queue only)
    always choose w1; the default weights (queue 1, in_flight 1) tie them."""
    from picker.fleet.engine_load import EngineLoad

    def configured(weights: dict[str, float] | None) -> PickerRuntime:
        policies = {} if weights is None else {"weighted": {"scorers": weights, "seed": 1}}
        r = router(*fleet(2), policies=policies)
        w0, w1 = r.registry.workers()
        now = time.monotonic()
        r.registry.set_engine_load(w0, EngineLoad(scraped_at=now, waiting=0))
        r.registry.set_engine_load(w1, EngineLoad(scraped_at=now, waiting=9))
        for _ in range(5):
            r.registry.acquire(w0)
        return r

    def picks(r: PickerRuntime) -> set[str]:
        chosen = set()
        for _ in range(30):
            lease = r.routing.route_sync(chat_req("s", "q", **{"x-routing-strategy": "weighted"}))
            chosen.add(lease.worker.id)
            lease.release("completed")
        return chosen

    assert picks(configured({"queue": 1.0})) == {"w1"}
    assert picks(configured(None)) == {"w1", "w2"}


def test_bad_params_of_a_per_request_policy_stop_start_up() -> None:
    from picker.config import load_config
    from picker.errors import ConfigError

    with pytest.raises(ConfigError) as caught:
        load_config(overrides={"policies": {"weighted": {"scorerz": {"queue": 1}}}})
    assert caught.value.key == "policies.weighted.scorerz"  # as written: no params level
    with pytest.raises(ConfigError) as caught:
        load_config(overrides={"policy": {"name": "weighted",
                                          "params": {"scorerz": {"queue": 1}}}})
    assert caught.value.key == "policy.params.scorerz"
