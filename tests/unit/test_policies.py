"""Each built-in policy, table-driven where it can be, with the fairness properties it claims."""

from __future__ import annotations

from collections import Counter

import pytest

from picker.errors import ConfigError
from picker.policies import POLICIES, create_policy
from picker.registry import Worker
from picker.request import Api, RoutingRequest
from picker.workers import WorkerSpec


def workers(*loads: int, **fields: object) -> list[Worker]:
    out = []
    for i, load in enumerate(loads):
        worker = Worker(WorkerSpec.model_validate({"url": f"h:{i + 1}", "id": f"w{i}", **fields}))
        worker.in_flight = load
        out.append(worker)
    return out


def req(model: str = "m") -> RoutingRequest:
    return RoutingRequest(model=model, api=Api.CHAT)


def test_unknown_policy_and_parameters_are_config_errors() -> None:
    with pytest.raises(ConfigError) as caught:
        create_policy("fastest")
    assert caught.value.key == "policy.name" and "round_robin" in str(caught.value)
    with pytest.raises(ConfigError) as caught:
        create_policy("least_load", {"sed": 1})
    assert caught.value.key == "policy.params"


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_every_policy_returns_a_candidate_and_handles_one(name: str) -> None:
    policy = create_policy(name)
    pool = workers(0, 1, 2)
    for _ in range(20):
        assert policy.pick(req(), pool) in pool
    (only,) = workers(5)
    assert policy.pick(req(), [only]) is only


def test_round_robin_is_exact_and_per_model() -> None:
    policy = create_policy("round_robin")
    pool = workers(0, 0, 0)
    picks = [policy.pick(req("a"), pool).id for _ in range(3)]
    policy.pick(req("b"), pool)  # another model's traffic does not shift model a's turn
    picks += [policy.pick(req("a"), pool).id for _ in range(27)]
    assert Counter(picks) == {"w0": 10, "w1": 10, "w2": 10}
    assert picks[:4] == ["w0", "w1", "w2", "w0"]


def test_random_is_reproducible_with_a_seed_and_covers_all() -> None:
    pool = workers(0, 0, 0)
    first, again = create_policy("random", {"seed": 3}), create_policy("random", {"seed": 3})
    picks = [first.pick(req(), pool) for _ in range(20)]
    assert picks == [again.pick(req(), pool) for _ in range(20)]
    policy = create_policy("random", {"seed": 3})
    assert {policy.pick(req(), pool).id for _ in range(100)} == {"w0", "w1", "w2"}


@pytest.mark.parametrize(
    ("loads", "priorities", "costs", "expected"),
    [
        ((3, 1, 2), (50, 50, 50), (1, 1, 1), "w1"),
        ((1, 1, 2), (10, 90, 50), (1, 1, 1), "w1"),  # equal load: higher priority
        ((1, 1, 2), (50, 50, 50), (2, 0.5, 1), "w1"),  # equal load and priority: cheaper
        ((0, 1, 0), (50, 50, 90), (1, 1, 1), "w2"),
    ],
)
def test_least_load_order(
    loads: tuple[int, ...], priorities: tuple[int, ...], costs: tuple[float, ...], expected: str
) -> None:
    pool = workers(*loads)
    for worker, priority, cost in zip(pool, priorities, costs, strict=True):
        worker.spec.priority, worker.spec.cost = priority, cost
    assert create_policy("least_load").pick(req(), pool).id == expected


def test_least_load_breaks_exact_ties_fairly_not_by_list_order() -> None:
    policy = create_policy("least_load", {"seed": 1})
    pool = workers(0, 0, 0, 5)
    counts = Counter(policy.pick(req(), pool).id for _ in range(600))
    assert set(counts) == {"w0", "w1", "w2"}
    assert min(counts.values()) > 150


def test_power_of_two_never_picks_the_unique_most_loaded() -> None:
    policy = create_policy("power_of_two", {"seed": 2})
    pool = workers(0, 3, 9)
    counts = Counter(policy.pick(req(), pool).id for _ in range(600))
    assert counts["w2"] == 0
    assert counts["w0"] > counts["w1"] > 0


def test_session_affinity_is_sticky_and_moves_only_the_leaving_workers_sessions() -> None:
    policy = create_policy("session_affinity")
    fleet = workers(0, 0, 0, 0)
    keys = [f"user-{i}" for i in range(200)]

    def home(key: str, pool: list[Worker]) -> str:
        request = RoutingRequest(model="m", api=Api.CHAT, session_key=key)
        return policy.pick(request, pool).id

    before = {key: home(key, fleet) for key in keys}
    assert before == {key: home(key, fleet) for key in keys}
    assert len(set(before.values())) == 4
    after = {key: home(key, fleet[1:]) for key in keys}  # w0 leaves
    assert all(after[k] == before[k] for k in keys if before[k] != "w0")


def test_session_affinity_header_and_fallback() -> None:
    policy = create_policy("session_affinity", {"header": "X-Tenant", "seed": 1})
    fleet = workers(5, 0, 5)
    keyed = RoutingRequest(model="m", api=Api.CHAT, headers={"x-tenant": "acme"})
    assert len({policy.pick(keyed, fleet).id for _ in range(10)}) == 1
    assert policy.pick(RoutingRequest(model="m", api=Api.CHAT), fleet).id == "w1"
