"""least_queue, least_kv and the weighted scorer profile over engine signals."""

from __future__ import annotations

import time

import pytest

from picker.errors import ConfigError
from picker.load_signals import EngineLoad
from picker.policies import create_policy
from picker.prefix import PrefixMatch
from picker.registry import Worker
from picker.request import Api, RoutingRequest
from picker.workers import WorkerSpec

REQ = RoutingRequest(model="m", api=Api.CHAT)


def fleet(*engines: dict[str, float] | None, age: float = 0.0,
          in_flight: tuple[int, ...] | None = None) -> list[Worker]:
    now = time.monotonic()
    out = []
    for i, values in enumerate(engines):
        worker = Worker(WorkerSpec(url=f"h:{i + 1}", id=f"w{i}"))
        worker.engine = None if values is None else EngineLoad(scraped_at=now - age, **values)
        worker.in_flight = in_flight[i] if in_flight else 0
        out.append(worker)
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
    assert caught.value.key == "policy.params"


def test_weighted_with_prefix_scorer_needs_the_index() -> None:
    assert create_policy("weighted", {"scorers": {"prefix": 1}}).needs_prefix
    assert not create_policy("weighted", {"scorers": {"queue": 1}}).needs_prefix
