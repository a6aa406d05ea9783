"""prefix_cache (AIBrix semantics) and cache_aware (sglang-router 0.3.2's), table-driven."""

from __future__ import annotations

import statistics

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from picker.fleet.worker_spec import WorkerSpec
from picker.policies import create_policy
from picker.policies.cache_aware import routing_text
from picker.policies.prefix_cache import pstdev
from picker.prefix import PrefixMatch
from picker.routing.request import Api, RoutingRequest
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


@settings(max_examples=300, deadline=None)
@given(loads=st.lists(st.integers(0, 30), min_size=1, max_size=8),
       blocks=st.lists(st.integers(0, 4), max_size=8),
       factor=st.sampled_from([0.0, 0.3, 2.0]))
def test_prefix_cache_takes_the_first_match_within_mean_plus_factor_sd(
        loads: list[int], blocks: list[int], factor: float) -> None:
    """The ceiling as the docstring defines it (the policy skips computing it when a load
    is not above the mean)."""
    matched = {f"w{i}": b for i, b in enumerate(blocks[:len(loads)]) if b}
    workers = pool(*loads)
    pick = create_policy("prefix_cache", {"seed": 0, "std_dev_factor": factor}).pick(
        req(10, **matched), workers)
    pooled = [w for w in workers if w.in_flight == min(loads)] \
        if max(loads) - min(loads) > 16 else list(workers)
    ceiling = statistics.fmean(loads) + factor * statistics.pstdev(loads)
    within = [w for w in sorted((w for w in pooled if w.id in matched),
                                key=lambda w: (-matched[w.id], w.in_flight))
              if w.in_flight <= ceiling]
    if within:
        assert pick is within[0]
    else:
        assert pick.in_flight == min(w.in_flight for w in pooled)


def text_req(text: str) -> RoutingRequest:
    return RoutingRequest(model="m", api=Api.COMPLETIONS, prompt_text=text)


SYSTEM = "You are a careful assistant. " * 4  # 116 characters


@pytest.mark.parametrize(
    ("loads", "history", "prompt", "params", "expected"),
    [
        # an empty tree, loads tied: the first candidate (sglang-router's min_by_key)
        ((2, 2, 2), [], SYSTEM, {}, "w0"),
        # no match: the least loaded, even if another tree is smaller (sglang-router 0.3.2)
        ((2, 1, 2), [("w2", "unrelated " * 10)], SYSTEM, {}, "w1"),
        # match rate 116/126 > 0.3: the tenant, though busier
        ((2, 1, 2), [("w2", SYSTEM)], SYSTEM + "question 1", {}, "w2"),
        # match rate 116/500 = 0.23 <= 0.3: least load; 0.2 threshold: the tenant
        ((2, 1, 2), [("w2", SYSTEM)], SYSTEM + "z" * 384, {}, "w1"),
        ((2, 1, 2), [("w2", SYSTEM)], SYSTEM + "z" * 384, {"cache_threshold": 0.2}, "w2"),
        # imbalanced (90 > 64 and 100 > 15): least load whatever the match
        ((100, 10, 50), [("w0", SYSTEM)], SYSTEM, {}, "w1"),
        # balanced (30 <= 64): the match, though the busiest
        ((100, 70, 90), [("w0", SYSTEM)], SYSTEM, {}, "w0"),
        # two tenants hold the system prompt: the one that reached it first (SGLang's
        # last_tenant, set when a node is created), not the less loaded one
        ((2, 9, 1), [("w1", SYSTEM + "a"), ("w2", SYSTEM + "b")], SYSTEM + "c", {}, "w1"),
    ],
)
def test_cache_aware(loads: tuple[int, ...], history: list[tuple[str, str]], prompt: str,
                     params: dict[str, float], expected: str) -> None:
    workers = pool(*loads)
    policy = create_policy("cache_aware", {"tie_break": "first", **params})
    for worker_id, text in history:  # earlier picks, forced through a single candidate
        policy.pick(text_req(text), [w for w in workers if w.id == worker_id])
    assert policy.pick(text_req(prompt), workers).id == expected


def test_cache_aware_imbalanced_picks_still_teach_the_tree() -> None:
    workers = pool(100, 10, 50)
    policy = create_policy("cache_aware", {"tie_break": "first"})
    assert policy.pick(text_req(SYSTEM), workers).id == "w1"
    workers.set_in_flight(workers[0], 10)
    workers.set_in_flight(workers[2], 10)
    workers.set_in_flight(workers[1], 20)
    assert policy.pick(text_req(SYSTEM + "more"), workers).id == "w1"


def test_cache_aware_random_ties_spread_cold_prompts() -> None:
    policy = create_policy("cache_aware", {"seed": 1})
    workers = pool(0, 0, 0, 0)
    picked = {policy.pick(text_req(f"cold prompt {i} " * 8), workers).id for i in range(20)}
    assert len(picked) == 4  # tie_break first would send all 20 to w0


def test_cache_aware_matches_chat_text_as_sglang_router_does() -> None:
    """Contents joined by spaces, roles and non-text parts left out (protocols/chat.rs)."""
    messages = [{"role": "system", "content": "sys"}, {"role": "user", "content": ""},
                {"role": "user", "content": [{"type": "text", "text": "a"},
                                             {"type": "image_url", "image_url": {}},
                                             {"type": "text", "text": "b"}]},
                {"role": "assistant", "content": "c", "reasoning_content": "r"}]
    request = RoutingRequest(model="m", api=Api.CHAT, prompt_text="ignored",
                             messages=messages)
    assert routing_text(request) == "sys a b c r"
    assert routing_text(text_req("plain")) == "plain"


@pytest.mark.parametrize("name", ["prefix_cache", "cache_aware"])
def test_without_match_info_they_fall_back_to_least_load(name: str) -> None:
    policy = create_policy(name)
    assert policy.pick(RoutingRequest(model="m", api=Api.CHAT), pool(3, 0, 3)).id == "w1"


def test_bad_parameters_are_config_errors() -> None:
    from picker.errors import ConfigError

    with pytest.raises(ConfigError, match="cache_threshold"):
        create_policy("cache_aware", {"cache_threshold": 2})


def test_cache_aware_forgets_a_worker_not_chosen_for_forget_after_secs() -> None:
    """A removed (or long-dead) worker's prompts leave the tree instead of staying resident
    for ever (review finding): at the first eviction after forget_after_secs."""
    from picker.policies.cache_aware import CacheAware, CacheAwareParams

    now = [0.0]
    policy = CacheAware(CacheAwareParams(tie_break="first", eviction_interval_secs=10,
                                         forget_after_secs=100), clock=lambda: now[0])
    both = pool(0, 0)
    assert policy.pick(text_req(SYSTEM), both).id == "w0"
    only_w1 = [both[1]]
    for step in range(1, 13):  # w0 gone: every pick goes to w1, on other prompts
        now[0] = step * 10.0
        policy.pick(text_req(f"other prompt {step} " * 4), only_w1)
    assert policy._tree.chars("w0") == 0  # noqa: SLF001 - the tree is the policy's own
    assert policy._tree.chars("w1") > 0  # noqa: SLF001


@settings(max_examples=2000, deadline=None)
@given(loads=st.lists(st.one_of(st.integers(0, 64), st.integers(0, 2**60)), min_size=1,
                      max_size=40))
def test_pstdev_is_statistics_pstdev(loads: list[int]) -> None:
    assert pstdev(loads) == statistics.pstdev(loads)
