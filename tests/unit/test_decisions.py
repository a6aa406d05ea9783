"""picker.observe.decisions: records match what happened, stay bounded, carry no prompt text; the
explain header only when allowed and asked for."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from picker.config import PickerConfig, load_config
from picker.errors import ConfigError, NoHealthyWorker, Overloaded
from picker.fleet.speed import Observation
from picker.observe.decisions import EXPLAIN_HEADER, ExplainSettings, explain_line
from picker.routing.leases import Lease
from picker.routing.request import Api, RoutingRequest
from picker.runtime import PickerRuntime

SECRET_PROMPT = "the launch code is 0000-tango-" * 20
API_KEY = "sk-worker-secret-123"


def runtime(policy: str = "prefix_cache", workers: int = 3, *, explain: dict[str, object]
            | None = None, **settings: object) -> PickerRuntime:
    specs = [{"url": f"10.0.0.{i}:8000", "id": f"w{i}", "models": ["m"], "api_key": API_KEY}
             for i in range(workers)]
    specs.append({"url": "10.0.1.1:8000", "id": "other", "models": ["other-model"]})
    return PickerRuntime(PickerConfig.model_validate({
        "workers": specs, "policy": {"name": policy}, "prefix": {"enabled": True},
        "explain": explain if explain is not None else {"enabled": True}, **settings}))


def chat(prompt: str = SECRET_PROMPT, **headers: str) -> RoutingRequest:
    return RoutingRequest(model="m", api=Api.CHAT, prompt_text=prompt, headers=headers)


def test_forced_imbalance_shows_the_passed_over_worker_and_why() -> None:
    """w0 holds the prompt, but it carries 20 requests and the others none: prefix_cache (its
    imbalance rule, 16) goes to an idle worker, and the record says so."""
    r = runtime()
    first = r.routing.route_sync(chat())
    hot = first.worker.id  # it now holds the prompt
    first.release("completed")
    held = [r.routing.route_sync(chat(f"unrelated {i} " * 40)) for i in range(60)]
    for lease in held:
        if lease.worker.id != hot:
            lease.release("completed")  # leave only the hot worker loaded
    load = {w.id: w.in_flight for w in r.registry.workers()}
    assert load[hot] > 16 and sum(load.values()) == load[hot], load
    lease = r.routing.route_sync(chat(**{"x-request-id": "req-1"}))
    assert lease.worker.id != hot
    decision = lease.choice.decision
    assert decision is not None and r.decisions is not None
    assert r.decisions.find("req-1") is decision
    record = decision.to_dict()
    assert record["reason"] == "load-over-prefix"
    by_worker = {c["worker"]: c for c in record["candidates"]}
    assert by_worker[hot]["match"] == 1.0 and by_worker[hot]["in_flight"] > 16
    assert by_worker[lease.worker.id]["match"] == 0.0
    assert by_worker[lease.worker.id]["in_flight"] == 0
    assert record["worker"] == lease.worker.id and record["policy"] == "prefix_cache"
    assert {"worker": "other", "reason": "other_model"} in record["excluded"]


def test_best_prefix_reason_and_header_line() -> None:
    r = runtime()
    r.routing.route_sync(chat()).release("completed")
    lease = r.routing.route_sync(chat(**{EXPLAIN_HEADER: "1"}))
    decision = lease.choice.decision
    assert decision is not None and decision.reason == "best-prefix"
    assert decision.header_line() == f"policy=prefix_cache; worker={lease.worker.id}; " \
                                     "match=1.00; reason=best-prefix"
    assert lease.choice.match == 1.0


@pytest.mark.parametrize(("how", "reason"), [
    ("unhealthy", "unhealthy"), ("draining", "draining"), ("circuit", "circuit_open")])
def test_filtered_workers_are_listed_with_their_reason(how: str, reason: str) -> None:
    r = runtime("least_load")
    worker = r.registry.get("w1")
    assert worker is not None
    if how == "unhealthy":
        r.registry.set_healthy(worker, False)
    elif how == "draining":
        r.registry.set_draining(worker)
    else:
        for _ in range(3):
            r.registry.record_outcome(worker, False)
    decision = r.routing.route_sync(chat()).choice.decision
    assert decision is not None
    assert ("w1", reason) in [(w, e.value) for w, e in decision.excluded()]
    assert "w1" not in [c["worker"] for c in decision.to_dict()["candidates"]]


def test_not_allowed_and_cap_reached_and_refusals_are_recorded() -> None:
    r = runtime("least_load", limits={"per_worker_max": 1})
    lease = r.routing.route_sync(chat(), allowed={"w0", "w1"})
    decision = lease.choice.decision
    assert decision is not None and ("w2", "not_allowed") in decision.excluded()
    r.routing.route_sync(chat(), allowed={"w0", "w1"})
    with pytest.raises(Overloaded):
        r.routing.route_sync(chat(**{"x-request-id": "refused-1"}), allowed={"w0", "w1"})
    assert r.decisions is not None
    refused = r.decisions.find("refused-1")
    assert refused is not None and refused.winner is None
    record = refused.to_dict()
    assert record["error"] == "overloaded" and record["reason"] == "overloaded"
    assert {(e["worker"], e["reason"]) for e in record["excluded"]} >= {
        ("w0", "cap_reached"), ("w1", "cap_reached"), ("w2", "not_allowed")}
    with pytest.raises(NoHealthyWorker):
        r.routing.route_sync(chat(), allowed=set())


def test_weighted_records_each_scorers_score() -> None:
    r = PickerRuntime(PickerConfig.model_validate({
            "workers": [{"url": f"10.0.0.{i}:8000", "id": f"w{i}", "models": ["m"]}
                        for i in range(2)],
            "policy": {"name": "weighted", "params": {"scorers": {"in_flight": 2, "prefix": 1}}},
            "prefix": {"enabled": True}, "explain": {"enabled": True}}))
    held = r.routing.route_sync(chat("x" * 300))
    decision = r.routing.route_sync(chat()).choice.decision
    assert decision is not None and decision.reason == "best-score"
    record = decision.to_dict()
    scores = {c["worker"]: c["scores"] for c in record["candidates"]}
    assert scores[held.worker.id]["in_flight"] == 0.0
    winner = record["worker"]
    assert winner != held.worker.id and scores[winner]["in_flight"] == 1.0
    assert scores[winner]["total"] == pytest.approx(2 * 1.0 + 1 * scores[winner]["prefix"])


def test_records_show_the_prefill_tokens_ahead_on_each_candidate() -> None:
    """Uncached prompt tokens sent to a worker and not yet prefilled, as the decision saw them
    (the request's own prompt not among them)."""
    r = runtime("round_robin", workers=2)
    for worker in r.registry.workers():
        r.registry.observe(worker, Observation(prompt_tokens=100, cached_tokens=0,
                                               ttft_secs=10.0))  # 10 tokens/s
    held = r.routing.route_sync(chat())
    sent = held.choice.uncached_tokens
    assert sent > 100
    decision = r.routing.route_sync(chat("another prompt " * 30)).choice.decision
    assert decision is not None
    ahead = {c["worker"]: c["prefill_ahead"] for c in decision.to_dict()["candidates"]}
    assert ahead[held.worker.id] == pytest.approx(sent, abs=2)
    assert sum(ahead.values()) == ahead[held.worker.id]


def test_ring_buffer_stays_bounded_under_10k_decisions() -> None:
    r = runtime("round_robin", explain={"enabled": True, "capacity": 500})
    log = r.decisions
    assert log is not None
    for i in range(10_000):
        r.routing.route_sync(chat(f"prompt {i} " * 30, **{"x-request-id": f"r{i}"})).release(
            "completed")
        assert len(log) <= 500
    assert len(log) == 500
    newest = log.recent(limit=10_000)
    assert len(newest) == 500 and newest[0].request_id == "r9999"
    assert newest[-1].request_id == "r9500"
    assert log.find("r9499") is None and log.find("r9500") is not None
    assert [d.request_id for d in log.recent(3, worker="w1")] == ["r9997", "r9994", "r9991"]
    assert log.recent(5, model="nope") == []


def test_records_and_header_hold_no_prompt_text_or_secret() -> None:
    r = runtime(explain={"enabled": True, "allow_header": True})
    leases: list[Lease] = []
    for _ in range(3):
        leases.append(r.routing.route_sync(chat(**{EXPLAIN_HEADER: "1"})))
    assert r.decisions is not None
    dumped = json.dumps([d.to_dict() for d in r.decisions.recent(100)])
    lines = [explain_line(r.config.explain, {EXPLAIN_HEADER: "1"}, lease.choice.decision)
             for lease in leases]
    for text in (dumped, *map(str, lines)):
        assert "launch code" not in text and "tango" not in text
        assert API_KEY not in text and "10.0.0." not in text


@pytest.mark.parametrize(("settings", "asked", "expected"), [
    ({"enabled": True, "allow_header": True}, "1", True),
    ({"enabled": True, "allow_header": True}, None, False),
    ({"enabled": True, "allow_header": True}, "yes", False),
    ({"enabled": True, "allow_header": False}, "1", False),
    ({"enabled": False}, "1", False),
])
def test_explain_header_only_when_allowed_and_asked(settings: dict[str, object],
                                                    asked: str | None, expected: bool) -> None:
    r = runtime(explain=settings)
    headers = {} if asked is None else {EXPLAIN_HEADER: asked}
    lease = r.routing.route_sync(chat(**headers))
    line = explain_line(r.config.explain, headers, lease.choice.decision)
    assert (line is not None) is expected
    if expected:
        assert line is not None and line.startswith("policy=prefix_cache; worker=w")


def test_header_line_cannot_be_split_by_a_worker_id() -> None:
    """Such an id is refused where workers are declared (picker.fleet.worker_spec's id
    characters)."""
    with pytest.raises(ValidationError, match="letters, digits"):
        PickerConfig.model_validate({
            "workers": [{"url": "10.0.0.1:8000", "id": "evil\r\nset-cookie: x; y",
                         "models": ["m"]}],
            "explain": {"enabled": True}})


def test_explain_off_records_nothing() -> None:
    r = runtime(explain={"enabled": False})
    lease = r.routing.route_sync(chat())
    assert r.decisions is None and lease.choice.decision is None
    assert lease.choice.policy == "prefix_cache" and lease.choice.match == 0.0


def test_allow_header_needs_enabled() -> None:
    with pytest.raises(ConfigError, match=r"explain\.allow_header"):
        load_config(overrides={"explain.allow_header": True})
    assert ExplainSettings().enabled is False


async def test_a_pair_decision_names_the_other_role_as_such() -> None:
    """The decode router's record lists the prefill engine of the same model: not another
    model's, another role's."""
    r = PickerRuntime(PickerConfig.model_validate({
        "enable_igw": True, "explain": {"enabled": True}, "workers": [
            {"url": "p:1", "id": "p", "models": ["m"], "worker_type": "prefill",
             "kv_connector": "llm-d"},
            {"url": "d:1", "id": "d", "models": ["m"], "worker_type": "decode",
             "kv_connector": "llm-d"},
            {"url": "o:1", "id": "o", "models": ["other-model"]}]}))
    lease = await r.routing.route(RoutingRequest(model="m", api=Api.CHAT))
    decision = lease.choice.decision
    assert decision is not None and lease.worker.id == "d"
    assert sorted(decision.excluded()) == [("o", "other_model"), ("p", "other_role")]
