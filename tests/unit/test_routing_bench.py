"""The routing benchmark's own arithmetic: stickiness, group splits and the TTFT classes that
issue 19's p50 argument rests on (picker_bench.routing)."""

from __future__ import annotations

import pytest

from picker_bench.routing import _stickiness, _ttft_by_class, _Variant
from picker_bench.workload import Served, Workload


def _workload(keys: list[tuple[str, int]]) -> Workload:
    return Workload(bodies=[{} for _ in keys], arrivals=[0.1 * i for i in range(len(keys))],
                    keys=keys)


def test_a_turn_is_sticky_only_on_its_previous_turns_engine() -> None:
    workload = _workload([("c0", 0), ("c0", 1), ("c0", 2), ("g0", 0), ("g0", 0)])
    outcomes = [Served("e0", 200, 0.1, 0.2), Served("e0", 200, 0.1, 0.2),
                Served("e1", 200, 0.1, 0.2), Served("e2", 200, 0.1, 0.2),
                Served("e2", 200, 0.1, 0.2)]
    # Turn 1 stayed on e0, turn 2 moved; c0 is split over two engines, g0 is not.
    assert _stickiness(workload, outcomes) == (1, 2, 1, 2)


def test_classes_split_by_engine_half_and_first_request_of_a_group() -> None:
    workload = _workload([("g0", 0), ("g0", 0), ("g1", 0), ("g1", 0), ("g0", 0), ("g2", 0)])
    outcomes = [Served("e0", 200, 0.09, 0.2),  # g0 first: fast cold
                Served("e0", 200, 0.04, 0.2),  # fast warm
                Served("e3", 200, 0.27, 0.4),  # g1 first on a slow engine: slow cold
                Served("e2", 200, 0.07, 0.2),  # slow warm
                Served("e1", 500, 0.0, 0.0),  # failed: in no class
                Served("e2", 200, 0.30, 0.5)]  # g2 first: slow cold
    by_class = _ttft_by_class(workload, outcomes, engines=4)
    assert by_class == {"fast warm": [0.04], "fast cold": [0.09], "slow warm": [0.07],
                        "slow cold": [0.27, 0.30]}


def test_a_failed_first_request_still_makes_the_group_warm() -> None:
    """Cold means "no engine could hold the prefix yet", decided by arrival order: a first
    request that failed does not make the next one cold."""
    workload = _workload([("g0", 0), ("g0", 0)])
    outcomes = [Served("e0", 503, 0.0, 0.0), Served("e0", 200, 0.05, 0.1)]
    assert _ttft_by_class(workload, outcomes, engines=2)["fast warm"] == [0.05]


def test_contender_options_parse_in_any_order_and_unknown_ones_are_named() -> None:
    assert _Variant.parse("weighted+slo300+gateway") == _Variant(
        "weighted", gateway=True, headers=(("x-slo-ttft-ms", "300"),))
    assert _Variant.parse("prefix_cache+gateway+kv_events") == _Variant(
        "prefix_cache", kv_events=True, gateway=True)
    assert _Variant.parse("litellm:least-busy") == _Variant("litellm:least-busy")
    with pytest.raises(ValueError, match=r"unknown option \+fast"):
        _Variant.parse("weighted+fast")
