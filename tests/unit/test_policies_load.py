"""least_queue, least_kv and the weighted scorer profile over engine signals."""

from __future__ import annotations

import time

import pytest

from picker.config import load_config
from picker.errors import ConfigError
from picker.fleet.engine_load import EngineLoad
from picker.fleet.worker_spec import WorkerSpec
from picker.policies import create_policy, parse_params
from picker.policies.scorers import SCORERS
from picker.prefix import PrefixMatch
from picker.routing.request import Api, RoutingRequest
from tests.live import Fleet

REQ = RoutingRequest(model="m", api=Api.CHAT)


def fleet(*engines: dict[str, float] | None, age: float = 0.0,
          in_flight: tuple[int, ...] | None = None) -> Fleet:
    now = time.monotonic()
    out = Fleet(WorkerSpec(url=f"h:{i + 1}", id=f"w{i}") for i in range(len(engines)))
    for i, (worker, values) in enumerate(zip(out, engines, strict=True)):
        out.set_engine(worker, None if values is None
                       else EngineLoad(scraped_at=now - age, **values))
        out.set_in_flight(worker, in_flight[i] if in_flight else 0)
    return out


@pytest.mark.parametrize(
    ("policy", "engines", "in_flight", "expected"),
    [
        ("least_queue", ({"waiting": 5}, {"waiting": 1}, {"waiting": 3}), None, "w1"),
        ("least_queue", ({"waiting": 5}, None, {"waiting": 3}), None, "w2"),
        ("least_queue", (None, None, None), (3, 0, 2), "w1"),  # nothing known: in-flight
        ("least_kv", ({"kv_usage": 0.9}, {"kv_usage": 0.2}), None, "w1"),
        ("least_kv", ({"waiting": 1}, {"kv_usage": 0.2}), None, "w1"),
    ],
)
def test_engine_signal_policies(policy: str, engines: tuple[dict[str, float] | None, ...],
                                in_flight: tuple[int, ...] | None, expected: str) -> None:
    assert create_policy(policy).pick(REQ, fleet(*engines, in_flight=in_flight)).id == expected


def test_stale_metrics_are_ignored() -> None:
    stale = fleet({"waiting": 0}, {"waiting": 9}, age=10.0, in_flight=(5, 0))
    assert create_policy("least_queue").pick(REQ, stale).id == "w1"  # fell back to in-flight
    fresh = fleet({"waiting": 0}, {"waiting": 9}, in_flight=(5, 0))
    assert create_policy("least_queue").pick(REQ, fresh).id == "w0"


@pytest.mark.parametrize(
    ("weights", "expected"),
    [
        ({"queue": 1.0}, "w1"),
        ({"in_flight": 1.0}, "w0"),
        ({"queue": 1.0, "in_flight": 3.0}, "w0"),
        ({"prefix": 3.0, "queue": 1.0}, "w2"),
    ],
)
def test_weights_change_the_winner(weights: dict[str, float], expected: str) -> None:
    workers = fleet({"waiting": 8}, {"waiting": 0}, {"waiting": 4}, in_flight=(0, 6, 3))
    request = RoutingRequest(model="m", api=Api.CHAT, prefix=PrefixMatch(10, {"w2": 10}))
    policy = create_policy("weighted", {"scorers": weights, "seed": 0})
    assert policy.pick(request, workers).id == expected


@pytest.mark.parametrize("params", [{"scorers": {"speed": 1}}, {"scorers": {"queue": -1}},
                                    {"scorers": {"queue": 0}}])
def test_bad_weighted_config(params: dict[str, object]) -> None:
    with pytest.raises(ConfigError) as caught:
        create_policy("weighted", params)
    assert caught.value.key.startswith("policy.params.scorers")


def test_weighted_with_prefix_scorer_needs_the_index() -> None:
    assert parse_params("weighted", {"scorers": {"prefix": 1}}).needs_prefix()
    assert not parse_params("weighted", {"scorers": {"queue": 1}}).needs_prefix()


@pytest.mark.parametrize(
    ("policy", "engines", "age", "in_flight", "expected"),
    [
        # Fresh values compete; the worker whose value is stale or missing does not.
        ("least_kv", ({"kv_usage": 0.9}, None, {"kv_usage": 0.5}), 0.0, (0, 0, 9), "w2"),
        ("least_kv", ({"kv_usage": 0.1}, {"kv_usage": 0.5}), 10.0, (4, 1), "w1"),
        ("least_kv", (None, None), 0.0, (2, 1), "w1"),
        # Equal engine values: the in-flight count breaks the tie.
        ("least_queue", ({"waiting": 2}, {"waiting": 2}, {"waiting": 3}), 0.0, (4, 1, 0), "w1"),
        # Exported but not this field (an SGLang-ish worker without kv): unknown, not zero.
        ("least_queue", ({"kv_usage": 0.1}, {"waiting": 6}), 0.0, (0, 9), "w1"),
    ],
    ids=["missing-does-not-compete", "all-stale-falls-back", "none-scraped-falls-back",
         "tie-broken-by-in-flight", "field-not-exported"],
)
def test_staleness_and_missing_values(policy: str, engines: tuple[dict[str, float] | None, ...],
                                      age: float, in_flight: tuple[int, ...],
                                      expected: str) -> None:
    workers = fleet(*engines, age=age, in_flight=in_flight)
    assert create_policy(policy).pick(REQ, workers).id == expected


def test_stale_threshold_is_the_policy_parameter() -> None:
    workers = fleet({"waiting": 0}, {"waiting": 9}, age=3.0, in_flight=(5, 0))
    assert create_policy("least_queue", {"stale_after_secs": 5.0}).pick(REQ, workers).id == "w0"
    assert create_policy("least_queue", {"stale_after_secs": 2.0}).pick(REQ, workers).id == "w1"


@pytest.mark.parametrize(
    ("scorer", "engines", "in_flight", "expected"),
    [
        ("queue", ({"waiting": 8}, {"waiting": 2}, None), (0, 0, 0), [0.0, 0.75, None]),
        ("queue", ({"waiting": 0}, {"waiting": 0}), (0, 0), [1.0, 1.0]),
        ("running", ({"running": 4}, {"running": 1}), (0, 0), [0.0, 0.75]),
        ("kv", ({"kv_usage": 0.25}, None), (0, 0), [0.75, None]),
        ("in_flight", (None, None, None), (4, 1, 0), [0.0, 0.75, 1.0]),
    ],
)
def test_scorers(scorer: str, engines: tuple[dict[str, float] | None, ...],
                 in_flight: tuple[int, ...], expected: list[float | None]) -> None:
    workers = fleet(*engines, in_flight=in_flight)
    assert SCORERS[scorer].score(REQ, workers, time.monotonic(), 5.0) == expected


def test_scorers_treat_stale_values_as_unknown() -> None:
    workers = fleet({"waiting": 1, "running": 1, "kv_usage": 0.5}, age=10.0)
    for name in ("queue", "running", "kv"):
        assert SCORERS[name].score(REQ, workers, time.monotonic(), 5.0) == [None]


@pytest.mark.parametrize(
    ("weights", "engines", "in_flight", "expected"),
    [
        # kv decides alone; adding running with more weight flips it.
        ({"kv": 1.0}, ({"kv_usage": 0.9, "running": 0}, {"kv_usage": 0.1, "running": 8}),
         (0, 0), "w1"),
        ({"kv": 1.0, "running": 2.0},
         ({"kv_usage": 0.9, "running": 0}, {"kv_usage": 0.1, "running": 8}), (0, 0), "w0"),
        # Stale queue values are neutral (0.5), not zero: the fresh worker with a queue of 0
        # scores 1.0 and wins over two unknowns.
        ({"queue": 1.0}, ({"waiting": 0}, None, None), (0, 0, 0), "w0"),
        # A zero weight silences a scorer.
        ({"queue": 0.0, "in_flight": 1.0}, ({"waiting": 0}, {"waiting": 9}), (3, 0), "w1"),
    ],
)
def test_weighted_profiles(weights: dict[str, float],
                           engines: tuple[dict[str, float] | None, ...],
                           in_flight: tuple[int, ...], expected: str) -> None:
    workers = fleet(*engines, in_flight=in_flight)
    assert create_policy("weighted", {"scorers": weights}).pick(REQ, workers).id == expected


def test_weighted_clamps_scores_before_weighting() -> None:
    # Prefix rates of 3.0 and 1.2 (more matched blocks than the prompt has) both count as 1.0,
    # so in-flight decides; unclamped, w0's 3.0 would win.
    workers = fleet(None, None, in_flight=(5, 0))
    request = RoutingRequest(model="m", api=Api.CHAT, prefix=PrefixMatch(10, {"w0": 30, "w1": 12}))
    policy = create_policy("weighted", {"scorers": {"prefix": 1.0, "in_flight": 1.0}})
    assert policy.pick(request, workers).id == "w1"


def test_weighted_breaks_ties_at_random() -> None:
    workers = fleet({"waiting": 1}, {"waiting": 1}, {"waiting": 1})
    policy = create_policy("weighted", {"scorers": {"queue": 1.0}, "seed": 7})
    assert {policy.pick(REQ, workers).id for _ in range(60)} == {"w0", "w1", "w2"}


@pytest.mark.parametrize(
    ("name", "params", "mentions"),
    [
        ("weighted", {"scorers": {"speed": 1}}, "speed"),
        ("weighted", {"scorers": {"queue": float("nan")}}, "queue"),
        ("weighted", {"scorers": {"queue": float("inf")}}, "queue"),
        ("weighted", {"scorers": {"queue": "2"}}, "queue"),
        ("weighted", {"scorers": {"queue": True}}, "queue"),
        ("weighted", {"scorers": {}}, "positive"),
        ("weighted", {"scorers": {"queue": 1}, "stale_after_secs": 0}, "stale_after_secs"),
        ("weighted", {"weights": {"queue": 1}}, "weights"),
        ("least_queue", {"stale_after_secs": -1}, "stale_after_secs"),
        ("least_kv", {"stale_after_secs": float("nan")}, "stale_after_secs"),
        ("least_kv", {"stale": 1}, "stale"),
    ],
)
def test_bad_params_are_config_errors(name: str, params: dict[str, object],
                                      mentions: str) -> None:
    with pytest.raises(ConfigError) as caught:
        create_policy(name, params)
    assert caught.value.key.startswith("policy.params")
    assert mentions in str(caught.value)


@pytest.mark.parametrize("policy", ["least_queue", "least_kv", "weighted"])
def test_load_stale_after_secs_is_the_default_threshold(policy: str) -> None:
    config = load_config(overrides={"policy.name": policy, "load.stale_after_secs": 2.0})
    params = config.policy_params()[policy]
    assert params.stale_after_secs == 2.0  # type: ignore[attr-defined]
    workers = fleet({"waiting": 0, "kv_usage": 0.0}, {"waiting": 9, "kv_usage": 0.9}, age=3.0,
                    in_flight=(5, 0))
    built = create_policy(config.policy.name, params)
    assert built.pick(REQ, workers).id == "w1"  # 3 s old is stale at 2 s: in-flight decides


def test_policy_params_win_over_the_load_default() -> None:
    config = load_config(overrides={"policy.name": "least_queue",
                                    "policy.params": {"stale_after_secs": 9.0},
                                    "load.stale_after_secs": 2.0})
    assert config.policy.params == {"stale_after_secs": 9.0}
    assert load_config(overrides={"policy.name": "least_load"}).policy.params == {}


def test_a_zero_weight_prefix_scorer_does_not_need_the_index() -> None:
    assert not parse_params("weighted", {"scorers": {"prefix": 0, "queue": 1}}).needs_prefix()
