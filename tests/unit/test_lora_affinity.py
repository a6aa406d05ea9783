"""LoRA affinity (picker.policies.lora_scores, lora_affinity, and the weighted `lora` scorer):
llm-d-router's rules, table-driven, on engines whose LoRA state is set by hand."""

from __future__ import annotations

import time

import pytest

from picker.fleet.engine_load import EngineLoad, LoraLoad
from picker.fleet.worker_spec import WorkerSpec
from picker.policies import create_policy
from picker.policies.lora_scores import lora_score
from picker.routing.request import Api, RoutingRequest
from tests.live import Fleet


def fleet(*loras: LoraLoad | None, in_flight: tuple[int, ...] = ()) -> Fleet:
    workers = Fleet(WorkerSpec(url=f"h:{i + 1}", id=f"w{i}", models=["base"],
                               adapters={"sql": "base", "chat": "base"})
                    for i in range(len(loras)))
    for i, (worker, lora) in enumerate(zip(workers, loras, strict=True)):
        workers.set_engine(worker, EngineLoad(scraped_at=time.monotonic(), lora=lora))
        workers.set_in_flight(worker, in_flight[i] if in_flight else 0)
    return workers


def req(model: str = "sql") -> RoutingRequest:
    return RoutingRequest(model=model, api=Api.CHAT)


def load(running: str = "", waiting: str = "", max_loras: int | None = 2) -> LoraLoad:
    return LoraLoad(frozenset(running.split(",")) - {""}, frozenset(waiting.split(",")) - {""},
                    max_loras)


@pytest.mark.parametrize(("lora", "score"), [
    (load("sql,x"), 1.0),  # active, even with every place taken
    (load("x"), 0.8),  # a free place
    (load("", max_loras=None), 0.8),  # no limit reported
    (load("x,y", "sql"), 0.6),  # full, but the adapter is queued there
    (load("x,y"), 0.0),  # full
    (load("x", "x"), 0.8),  # vLLM 0.33 lists x in both: one place, not two (llm-d: full)
    (None, None),  # no LoRA metrics
])
def test_llm_d_rules(lora: LoraLoad | None, score: float | None) -> None:
    (worker,) = fleet(lora)
    assert lora_score(req(), worker, time.monotonic(), 5.0) == score


def test_no_score_for_base_model_requests_or_stale_metrics() -> None:
    (worker,) = fleet(load("sql"))
    assert lora_score(req("base"), worker, time.monotonic(), 5.0) is None
    assert lora_score(req(), worker, time.monotonic() + 10, 5.0) is None


def test_policy_prefers_active_then_free_place_never_full_then_least_load() -> None:
    policy = create_policy("lora_affinity", {"seed": 1})
    full, free, active = load("x,y"), load("x"), load("sql,x")
    pool = fleet(full, free, active, in_flight=(0, 0, 9))
    assert policy.pick(req(), pool) is pool[2]  # active wins over idle
    pool = fleet(full, free, free, in_flight=(0, 3, 1))
    assert policy.pick(req(), pool) is pool[2]  # a free place, the least loaded of those
    pool = fleet(full, full, in_flight=(4, 1))
    assert policy.pick(req(), pool) is pool[1]  # all full: still served, least loaded
    pool = fleet(full, free, in_flight=(0, 5))
    assert policy.pick(req("base"), pool) is pool[0]  # base model: plain least load


def test_weighted_lora_scorer_keeps_new_adapters_off_full_engines() -> None:
    """Weighed against in-flight alone an idle full engine would win; the filter keeps the
    adapter where a place is free."""
    policy = create_policy("weighted", {"scorers": {"lora": 0.1, "in_flight": 1.0}, "seed": 1})
    pool = fleet(load("x,y"), load("x"), in_flight=(0, 8))
    assert all(policy.pick(req(), pool) is pool[1] for _ in range(10))
    assert policy.pick(req("base"), pool) is pool[0]


def test_session_affinity_is_per_adapter() -> None:
    """The same session key on two adapters is placed by two independent hashes."""
    policy = create_policy("session_affinity")
    pool = fleet(*[load()] * 4)
    picks = {(model, key): policy.pick(RoutingRequest(model=model, api=Api.CHAT,
                                                      session_key=key), pool).id
             for model in ("sql", "chat") for key in (f"user-{i}" for i in range(16))}
    assert any(picks["sql", k] != picks["chat", k] for _, k in picks)
