"""The simulator's prefix cache and latency model: cache hits must cost less, visibly."""

from __future__ import annotations

import time

import pytest

from picker_bench.loopback import loopback
from picker_sim.cache import BlockCache, token_block_hashes
from picker_sim.engine import PROFILES, SimConfig
from tests.sim_thread import running_sim


def test_block_cache_hits_pins_and_evicts_lru_unpinned() -> None:
    cache = BlockCache(capacity_blocks=4)
    a = token_block_hashes([f"a{i}" for i in range(8)], 2)  # 4 blocks
    first = cache.acquire(a)
    assert (first.hit_blocks, len(first.stored)) == (0, 4)
    b = token_block_hashes([f"b{i}" for i in range(4)], 2)
    while_pinned = cache.acquire(b)
    assert while_pinned.stored == [] and while_pinned.evicted == []  # all of a is pinned
    cache.release(while_pinned)
    cache.release(first)
    again = cache.acquire(a[:2])
    assert again.hit_blocks == 2
    cache.release(again)
    third = cache.acquire(b)
    assert third.hit_blocks == 0 and len(third.evicted) == 2
    assert a[2] in third.evicted and a[0] not in third.evicted  # LRU: a's head was just used
    assert sorted(cache.clear()) == sorted(a[:2])  # b stays: `third` pins it
    cache.release(third)
    assert sorted(cache.clear()) == sorted(b)


def test_profiles_are_valid_configs() -> None:
    for name in PROFILES:
        assert SimConfig.from_profile(name).model == "sim-model"
    with pytest.raises(ValueError, match="unknown sim profile"):
        SimConfig.from_profile("nope")


def metric(base: str, name: str) -> float:
    for line in loopback().get(f"{base}/metrics").text.splitlines():
        if line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(name)


def timed_chat(base: str, system: str, question: str) -> float:
    body = {"model": "m", "max_tokens": 1, "messages": [
        {"role": "system", "content": system}, {"role": "user", "content": question}]}
    started = time.perf_counter()
    assert loopback().post(f"{base}/v1/chat/completions", json=body).status_code == 200
    return time.perf_counter() - started


@pytest.mark.xdist_group("timing")  # bounds a wall-clock time: tests/conftest.py
def test_cached_prefix_shortens_time_to_first_token_and_is_counted() -> None:
    system = " ".join(f"word{i}" for i in range(3000))
    # 3,004 tokens at 5,000/s: 0.6 s of prefill, far above the request's other costs
    # (tokenizing, hashing 3,000 words: 74 ms seen on a busy 2-core machine, more than a third
    # of the 0.15 s that 20,000/s gave), so `warm < cold / 3` is about the cache alone.
    with running_sim(ttft_ms=0, tpot_ms=0, prefill_tokens_per_sec=5_000,
                     block_tokens=16, cache_blocks=1000) as base:
        cold = timed_chat(base, system, "first question")
        warm = timed_chat(base, system, "second question")
        assert cold > 0.12 and warm < cold / 3, (cold, warm)
        queries = metric(base, "vllm:prefix_cache_queries_total")
        hits = metric(base, "vllm:prefix_cache_hits_total")
        assert queries == 2 * 3004 and 2990 <= hits <= 3001
        assert loopback().post(f"{base}/reset_prefix_cache").status_code == 200
        assert timed_chat(base, system, "third question") > 0.12
