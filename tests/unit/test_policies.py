"""Each built-in policy, table-driven where it can be, with the fairness properties it claims."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from collections import Counter
from collections.abc import Callable

import pytest

from picker.errors import ConfigError
from picker.fleet.registry import Worker
from picker.fleet.worker_spec import WorkerSpec
from picker.policies import POLICIES, create_policy, parse_params
from picker.policies.base import SeededParams
from picker.routing.request import Api, RoutingRequest
from tests.live import Fleet


def workers(*loads: int, **fields: object) -> Fleet:
    fleet = Fleet(WorkerSpec.model_validate({"url": f"h:{i + 1}", "id": f"w{i}", **fields})
                  for i in range(len(loads)))
    for worker, load in zip(fleet, loads, strict=True):
        fleet.set_in_flight(worker, load)
    return fleet


def req(model: str = "m") -> RoutingRequest:
    return RoutingRequest(model=model, api=Api.CHAT)


# -- the factory -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "params", "key", "text"),
    [
        ("fastest", None, "policy.name", "round_robin"),  # the message lists the known ones
        ("", None, "policy.name", "least_load"),
        ("Least_Load", None, "policy.name", "unknown policy"),
        ("least_load", {"sed": 1}, "policy.params", "sed"),
        ("round_robin", {"seed": 1}, "policy.params", "seed"),
        ("random", {"seed": 1, "extra": 2}, "policy.params", "extra"),
        ("cache_aware", {"cache_threshold": 2}, "policy.params", "cache_threshold"),
        ("prefix_cache", {"imbalance_abs_count": -1}, "policy.params", "imbalance_abs_count"),
        ("weighted", {"scorers": {"bogus": 1}}, "policy.params", "bogus"),
        ("weighted", {"scorers": {"queue": 0}}, "policy.params", "positive"),
    ],
)
def test_bad_names_and_parameters_are_config_errors(
    name: str, params: dict[str, object] | None, key: str, text: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        create_policy(name, params)
    assert caught.value.key.startswith(key)
    assert text in str(caught.value)


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_every_policy_is_built_by_name_and_reports_it(name: str) -> None:
    policy = create_policy(name)
    assert policy.name == name
    assert create_policy(name, {}).name == name


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_every_policy_returns_a_candidate_and_handles_one(name: str) -> None:
    policy = create_policy(name)
    pool = workers(0, 1, 2)
    for _ in range(20):
        assert policy.pick(req(), pool) in pool
    (only,) = workers(5)
    for _ in range(3):
        assert policy.pick(req(), [only]) is only


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_only_a_policy_saying_it_matches_text_decides_by_the_text(name: str) -> None:
    """`matches_text()` lets a replay give a policy a text of the right length only (all one
    character): a policy that answers False must pick the same workers for it. Distinct
    prompts on equally loaded workers: a text-matching policy spreads them, and sends every
    one of the look-alikes where the first went."""
    params = parse_params(name, {})
    if isinstance(params, SeededParams):
        params = params.model_copy(update={"seed": 7})
    texts = [f"prompt {i} " * (3 + i % 5) for i in range(24)]

    def picks(text: Callable[[str], str]) -> list[str]:
        policy, pool = create_policy(name, params), workers(0, 0, 0, 0)
        return [policy.pick(RoutingRequest(model="m", api=Api.COMPLETIONS,
                                           prompt_text=text(one)), pool).id for one in texts]

    assert (picks(lambda one: one) != picks(lambda one: "x" * len(one))) \
        == params.matches_text()


# -- round robin -----------------------------------------------------------------------------


@pytest.mark.parametrize("size", [1, 2, 3, 7])
def test_round_robin_spreads_exactly_evenly(size: int) -> None:
    policy = create_policy("round_robin")
    pool = workers(*[0] * size)
    picks = [policy.pick(req(), pool).id for _ in range(size * 11)]
    assert Counter(picks) == {f"w{i}": 11 for i in range(size)}
    assert picks[:size] == [f"w{i}" for i in range(size)]  # one full turn before repeating


def test_round_robin_ignores_load() -> None:
    policy = create_policy("round_robin")
    pool = workers(100, 0)
    assert [policy.pick(req(), pool).id for _ in range(4)] == ["w0", "w1", "w0", "w1"]


@pytest.mark.parametrize(
    ("models", "expected"),
    [
        # each model has its own cursor: interleaving does not shift the other's turn
        ("aabab", ["w0", "w1", "w0", "w2", "w1"]),
        ("abcabc", ["w0", "w0", "w0", "w1", "w1", "w1"]),
        ("aaab", ["w0", "w1", "w2", "w0"]),
    ],
)
def test_round_robin_keeps_a_cursor_per_model(models: str, expected: list[str]) -> None:
    policy = create_policy("round_robin")
    pool = workers(0, 0, 0)
    assert [policy.pick(req(m), pool).id for m in models] == expected


def test_round_robin_is_even_per_model_under_mixed_traffic() -> None:
    policy = create_policy("round_robin")
    pool = workers(0, 0, 0)
    picks: dict[str, list[str]] = {"a": [], "b": []}
    for i in range(90):
        model = "a" if i % 3 else "b"  # a gets 60 requests, b 30
        picks[model].append(policy.pick(req(model), pool).id)
    assert Counter(picks["a"]) == {"w0": 20, "w1": 20, "w2": 20}
    assert Counter(picks["b"]) == {"w0": 10, "w1": 10, "w2": 10}


def test_round_robin_instances_do_not_share_state() -> None:
    pool = workers(0, 0)
    first, second = create_policy("round_robin"), create_policy("round_robin")
    first.pick(req(), pool)
    assert second.pick(req(), pool).id == "w0"


# -- random ----------------------------------------------------------------------------------


def test_random_is_reproducible_with_a_seed_and_covers_all() -> None:
    pool = workers(0, 0, 0, 0)
    first, again = create_policy("random", {"seed": 3}), create_policy("random", {"seed": 3})
    picks = [first.pick(req(), pool).id for _ in range(50)]
    assert picks == [again.pick(req(), pool).id for _ in range(50)]
    other = create_policy("random", {"seed": 4})
    assert picks != [other.pick(req(), pool).id for _ in range(50)]
    policy = create_policy("random", {"seed": 3})
    counts = Counter(policy.pick(req(), pool).id for _ in range(400))
    assert set(counts) == {"w0", "w1", "w2", "w3"}
    assert min(counts.values()) > 60  # uniform: 100 expected each


def test_random_ignores_load() -> None:
    policy = create_policy("random", {"seed": 1})
    pool = workers(1000, 0)
    assert {policy.pick(req(), pool).id for _ in range(50)} == {"w0", "w1"}


# -- least load ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("loads", "priorities", "costs", "expected"),
    [
        ((3, 1, 2), (50, 50, 50), (1, 1, 1), "w1"),
        ((3, 1, 2), (90, 10, 90), (0.1, 9, 0.1), "w1"),  # load first, whatever priority/cost
        ((1, 1, 2), (10, 90, 50), (1, 1, 1), "w1"),  # equal load: higher priority
        ((1, 1, 2), (50, 50, 50), (2, 0.5, 1), "w1"),  # equal load and priority: cheaper
        ((1, 1, 1), (50, 60, 60), (1, 2, 1.5), "w2"),  # priority, then cost among those
        ((0, 1, 0), (50, 50, 90), (1, 1, 1), "w2"),
        ((0, 0, 0), (0, 2**32 - 1, 0), (1, 1, 1), "w1"),
    ],
)
def test_least_load_order(
    loads: tuple[int, ...], priorities: tuple[int, ...], costs: tuple[float, ...], expected: str
) -> None:
    pool = workers(*loads)
    for worker, priority, cost in zip(pool, priorities, costs, strict=True):
        worker.spec.priority, worker.spec.cost = priority, cost
    policy = create_policy("least_load")
    assert {policy.pick(req(), pool).id for _ in range(20)} == {expected}


def test_least_load_follows_live_load() -> None:
    policy = create_policy("least_load")
    pool = workers(0, 0, 0)
    picks = []
    for _ in range(9):  # taking a slot each time: the fleet fills evenly
        worker = policy.pick(req(), pool)
        pool.registry.acquire(worker)
        picks.append(worker.id)
    assert Counter(picks) == {"w0": 3, "w1": 3, "w2": 3}


@pytest.mark.parametrize("seed", [None, 1, 2])
def test_least_load_breaks_exact_ties_fairly_not_by_list_order(seed: int | None) -> None:
    policy = create_policy("least_load", {"seed": seed} if seed is not None else {})
    pool = workers(0, 0, 0, 5)
    counts = Counter(policy.pick(req(), pool).id for _ in range(300))
    assert set(counts) == {"w0", "w1", "w2"}  # never the loaded one, every tied one
    assert min(counts.values()) >= 60  # 100 expected each; P(< 60) is about 1e-6


def test_least_load_ties_only_among_the_best_priority_and_cost() -> None:
    policy = create_policy("least_load", {"seed": 5})
    pool = workers(0, 0, 0, 0)
    pool[0].spec.cost = 2.0  # same load and priority, dearer: out of the tie
    pool[3].spec.priority = 10
    counts = Counter(policy.pick(req(), pool).id for _ in range(300))
    assert set(counts) == {"w1", "w2"} and min(counts.values()) >= 100


# -- power of two ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "loads",
    [(0, 3, 9), (9, 3, 0), (3, 9, 0), (0, 0, 50), (1, 2, 3, 4, 100), (10, 11, 12)],
)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_power_of_two_never_picks_the_unique_most_loaded(loads: tuple[int, ...],
                                                         seed: int) -> None:
    policy = create_policy("power_of_two", {"seed": seed})
    pool = workers(*loads)
    most = pool[loads.index(max(loads))].id
    counts = Counter(policy.pick(req(), pool).id for _ in range(300))
    assert counts[most] == 0
    # every other worker is sometimes the better of its pair and gets picked
    assert set(counts) == {w.id for w in pool} - {most}


def test_power_of_two_favours_the_least_loaded() -> None:
    policy = create_policy("power_of_two", {"seed": 2})
    pool = workers(0, 3, 9)
    counts = Counter(policy.pick(req(), pool).id for _ in range(600))
    # w0 wins both pairs it is in (2/3 of draws), w1 only the pair {w1, w2} (1/3)
    assert 340 < counts["w0"] < 460 and counts["w1"] == 600 - counts["w0"]


def test_power_of_two_with_two_candidates_is_least_load() -> None:
    policy = create_policy("power_of_two", {"seed": 9})
    pool = workers(4, 1)
    assert {policy.pick(req(), pool).id for _ in range(50)} == {"w1"}


def test_power_of_two_is_reproducible_with_a_seed() -> None:
    pool = workers(0, 0, 0, 0, 0)
    first, again = create_policy("power_of_two", {"seed": 7}), create_policy(
        "power_of_two", {"seed": 7})
    assert [first.pick(req(), pool).id for _ in range(40)] == [
        again.pick(req(), pool).id for _ in range(40)]


# -- session affinity ------------------------------------------------------------------------


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
    fleet.set_in_flight(fleet[2], 500)  # load does not move a session
    assert before == {key: home(key, fleet) for key in keys}


def test_session_affinity_is_the_same_in_every_process() -> None:
    """A restarted picker, or another replica, sends a session to the same worker."""
    code = (
        "from picker.policies import create_policy\n"
        "from picker.fleet.registry import Worker\n"
        "from picker.routing.request import Api, RoutingRequest\n"
        "from picker.fleet.worker_spec import WorkerSpec\n"
        "pool = [Worker(WorkerSpec(url=f'h:{i + 1}', id=f'w{i}')) for i in range(4)]\n"
        "policy = create_policy('session_affinity')\n"
        "print(' '.join(policy.pick(RoutingRequest(model='m', api=Api.CHAT,\n"
        "    session_key=f'user-{i}'), pool).id for i in range(32)))\n"
    )
    runs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True, env={"PYTHONHASHSEED": seed}).stdout.strip()
            for seed in ("1", "2")}
    policy = create_policy("session_affinity")
    pool = workers(0, 0, 0, 0)
    here = " ".join(policy.pick(RoutingRequest(model="m", api=Api.CHAT,
                                               session_key=f"user-{i}"), pool).id
                    for i in range(32))
    assert runs == {here}


def test_session_affinity_header_and_fallback() -> None:
    policy = create_policy("session_affinity", {"header": "X-Tenant", "seed": 1})
    fleet = workers(5, 0, 5)
    keyed = RoutingRequest(model="m", api=Api.CHAT, headers={"x-tenant": "acme"})
    assert len({policy.pick(keyed, fleet).id for _ in range(10)}) == 1
    assert policy.pick(RoutingRequest(model="m", api=Api.CHAT), fleet).id == "w1"


class _MovingCounts:
    """Shared in-flight counts another process keeps changing: every read is one higher."""

    def __init__(self) -> None:
        self.reads = 0

    def total(self, column: int) -> int:
        self.reads += 1
        return self.reads


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_loads_changing_under_a_decision_never_break_it(name: str) -> None:
    """`serve --workers` (and LiteLLM's threads): least_load read each load twice and found no
    worker at the minimum it had just computed (IndexError, a 500 through Envoy)."""
    from picker.prefix import PrefixMatch

    counts = _MovingCounts()
    candidates = [Worker(WorkerSpec(url=f"http://10.0.0.{i}:8000", id=f"w{i}"),
                         counts=counts, column=i)  # type: ignore[arg-type]
                  for i in range(1, 5)]
    request = dataclasses.replace(req(), prefix=PrefixMatch(8, {"w1": 4}))
    policy = create_policy(name)
    for _ in range(20):
        assert policy.pick(request, candidates) in candidates
