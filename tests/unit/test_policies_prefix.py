"""prefix_cache (AIBrix semantics) and cache_aware (SGLang semantics), table-driven."""

from __future__ import annotations

import pytest

from picker.policies import create_policy
from picker.prefix import PrefixMatch
from picker.request import Api, RoutingRequest
from picker.workers import WorkerSpec
from tests.live import Fleet


def pool(*loads: int) -> Fleet:
    out = Fleet(WorkerSpec(url=f"h:{i + 1}", id=f"w{i}") for i in range(len(loads)))
    for worker, load in zip(out, loads, strict=True):
        out.set_in_flight(worker, load)
    return out


def req(total: int, **matched: int) -> RoutingRequest:
    return RoutingRequest(model="m", api=Api.CHAT, prefix=PrefixMatch(total, matched))


@pytest.mark.parametrize(
    ("loads", "matched", "params", "expected"),
    [
        # best match wins when loads are even
        ((2, 2, 2), {"w1": 5, "w2": 3}, {}, "w1"),
        # equal matches: lower load first
        ((3, 1, 2), {"w0": 5, "w1": 5}, {}, "w1"),
        # no match: least load
        ((3, 1, 2), {}, {}, "w1"),
        # imbalance > 16: restricted to the least loaded, even without a match there
        ((30, 0, 10), {"w0": 9}, {}, "w1"),
        # imbalance below threshold: the loaded match still wins if within mean + 2 sd
        ((10, 0, 5), {"w0": 9}, {}, "w0"),
        # a matched worker that is a load outlier (> mean + f*sd) is skipped
        ((9, 1, 1, 1), {"w0": 9, "w2": 2}, {"std_dev_factor": 0.5}, "w2"),
    ],
)
def test_prefix_cache(loads: tuple[int, ...], matched: dict[str, int],
                      params: dict[str, float], expected: str) -> None:
    policy = create_policy("prefix_cache", {"seed": 0, **params})
    assert policy.pick(req(10, **matched), pool(*loads)).id == expected


def sized(total: int, held: dict[str, int], **matched: int) -> RoutingRequest:
    return RoutingRequest(model="m", api=Api.CHAT, prefix=PrefixMatch(total, matched, held))


@pytest.mark.parametrize(
    ("policy", "loads", "request_", "params", "expected"),
    [
        ("cache_aware", (2, 2, 2), req(10, w2=8), {}, "w2"),  # rate 0.8 > 0.3
        # rate 0.2 <= 0.3: the smallest tree (SGLang), even if it is busier
        ("cache_aware", (2, 1, 2), sized(10, {"w0": 5, "w1": 9, "w2": 7}, w2=2), {}, "w0"),
        # equal trees (an empty fleet): least load among them
        ("cache_aware", (2, 1, 2), req(10, w2=2), {}, "w1"),
        ("cache_aware", (2, 1, 2), req(10, w2=2), {"cache_threshold": 0.1}, "w2"),
        ("cache_aware", (100, 10, 50), req(10, w0=10), {}, "w1"),  # 90 > 64, 100 > 15
        ("cache_aware", (100, 70, 90), req(10, w0=10), {}, "w0"),  # 30 <= 64: balanced
        # imbalanced: least load, whatever the trees
        ("cache_aware", (100, 10, 50), sized(10, {"w0": 0, "w1": 9, "w2": 9}), {}, "w1"),
    ],
)
def test_cache_aware(policy: str, loads: tuple[int, ...], request_: RoutingRequest,
                     params: dict[str, float], expected: str) -> None:
    picked = create_policy(policy, {"seed": 0, **params}).pick(request_, pool(*loads))
    assert picked.id == expected


@pytest.mark.parametrize("name", ["prefix_cache", "cache_aware"])
def test_without_match_info_they_fall_back_to_least_load(name: str) -> None:
    policy = create_policy(name)
    assert policy.pick(RoutingRequest(model="m", api=Api.CHAT), pool(3, 0, 3)).id == "w1"


def test_bad_parameters_are_config_errors() -> None:
    from picker.errors import ConfigError

    with pytest.raises(ConfigError, match="cache_threshold"):
        create_policy("cache_aware", {"cache_threshold": 2})
