"""Block hashing and the approximate prefix index."""

from __future__ import annotations

import random
import sys
from collections import OrderedDict
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from picker.prefix import ApproxPrefixIndex, PromptBlocks, block_hashes, namespace_hash
from picker.prefix.blocks import next_hash


def text(units: str) -> PromptBlocks:
    return PromptBlocks("m", units, is_tokens=False)


def test_equal_prefixes_share_leading_hashes_only() -> None:
    seed = namespace_hash("m")
    a = block_hashes(seed, "A" * 40 + "x" * 20, 10)
    b = block_hashes(seed, "A" * 40 + "y" * 20, 10)
    assert a[:4] == b[:4] and a[4:] != b[4:]
    assert len(block_hashes(seed, "z" * 59, 10)) == 5  # the partial block is left out


def test_namespaces_and_token_ids() -> None:
    m, n = namespace_hash("m"), namespace_hash("n")
    assert block_hashes(m, "abcd", 2) != block_hashes(n, "abcd", 2)
    lora = namespace_hash("m", lora="adapter-1")
    assert block_hashes(lora, "abcd", 2) != block_hashes(namespace_hash("m"), "abcd", 2)
    assert block_hashes(1, [1, 2, 3, 4], 2) == block_hashes(1, (1, 2, 3, 4), 2)


@pytest.mark.parametrize("units", ["abcdefg", [5, 6, 7, 8, 9, 10, 11]], ids=["chars", "tokens"])
def test_block_hashes_chain_next_hash(units: str | list[int]) -> None:
    """The KV-event index chains engine-reported blocks with next_hash: both must agree."""
    first = next_hash(7, units[0:3])
    assert block_hashes(7, units, 3) == [first, next_hash(first, units[3:6])]


def test_match_is_the_longest_leading_run_per_worker() -> None:
    index = ApproxPrefixIndex(block_size=10)
    prompt = "".join(chr(65 + i) * 10 for i in range(10))
    index.record(text(prompt[:60]), "w1")
    index.record(text(prompt[:35]), "w2")  # 3 complete blocks
    index.record(text("x" + prompt), "w3")  # same blocks shifted: not leading, no match
    match = index.match(text(prompt), ["w1", "w2", "w3", "w4"])
    assert match.total_blocks == 10
    assert (match.blocks("w1"), match.blocks("w2"), match.blocks("w3")) == (6, 3, 0)
    assert match.rate("w1") == 0.6
    assert index.match(text(prompt), ["w2"]).blocks("w1") == 0  # only candidates reported


def test_a_match_hashes_only_as_far_as_a_candidate_may_hold_the_prompt() -> None:
    """The chain is hashed in parts growing 4x while a candidate holds the last block hashed:
    a prompt nobody holds is hashed up to its first part, one held to its end is matched to
    its end; the rest of the chain is the same when hashed later (for the recording)."""
    index = ApproxPrefixIndex(block_size=2)
    units = "".join(chr(33 + i % 90) for i in range(1000))  # 500 blocks
    new = text(units)
    assert index.match(new, ["w1"]).matched == {}
    assert len(new.leading(2, 0)) == 64
    assert new.hashes(2) == block_hashes(namespace_hash("m", salt="characters"), units, 2)
    index.record(text(units[:800]), "w1")
    held = text(units)
    match = index.match(held, ["w1", "w2"])
    assert (match.total_blocks, match.blocks("w1")) == (500, 400)
    assert len(held.leading(2, 0)) == 500  # 64, 256, then past the 400 held blocks


def test_characters_and_tokens_never_match_each_other() -> None:
    index = ApproxPrefixIndex(block_size=2)
    index.record(PromptBlocks("m", [1, 2, 3, 4], is_tokens=True), "w")
    assert index.match(PromptBlocks("m", [1, 2, 3, 4], is_tokens=True), ["w"]).blocks("w") == 2
    assert index.match(PromptBlocks("other", [1, 2, 3, 4], is_tokens=True), ["w"]).matched == {}


def test_capacity_evicts_tails_before_shared_heads() -> None:
    index = ApproxPrefixIndex(capacity_blocks=8, block_size=10)
    first = text("S" * 40 + "a" * 40)
    second = text("S" * 40 + "b" * 40)
    index.record(first, "w")
    index.record(second, "w")
    assert index.blocks_of("w") == 8
    assert index.match(second, ["w"]).blocks("w") == 8
    assert index.match(first, ["w"]).blocks("w") == 4  # its tail went, the shared head stayed


def test_remove_worker_purges_everything() -> None:
    index = ApproxPrefixIndex(block_size=10)
    index.record(text("x" * 50), "w")
    index.remove_worker("w")
    assert index.match(text("x" * 50), ["w"]).matched == {}
    assert index._holders.masks == {}


def test_memory_is_bounded_by_capacity() -> None:
    index = ApproxPrefixIndex(capacity_blocks=100, block_size=1)
    rng = random.Random(1)
    for _ in range(200):
        index.record(PromptBlocks("m", [rng.getrandbits(60) for _ in range(20)], True),
                     f"w{rng.randrange(3)}")
    assert all(index.blocks_of(f"w{i}") <= 100 for i in range(3))
    assert len(index._holders.masks) <= 300


def test_bad_capacity() -> None:
    with pytest.raises(ValueError):
        ApproxPrefixIndex(0)


def test_bytes_per_entry_is_what_the_docs_say() -> None:
    """Rough upper bound used in docs/benchmarks.md: well under 300 bytes per cached block."""
    index = ApproxPrefixIndex(capacity_blocks=10_000, block_size=1)
    before = _deep_size(index)
    index.record(PromptBlocks("m", [random.getrandbits(60) for _ in range(10_000)], True), "w")
    per_entry = (_deep_size(index) - before) / 10_000
    assert per_entry < 300, per_entry


def _deep_size(index: ApproxPrefixIndex) -> int:
    masks = index._holders.masks
    total = sys.getsizeof(masks) + sum(sys.getsizeof(k) + sys.getsizeof(v)
                                       for k, v in masks.items())
    for lru in index._lru.values():
        total += sys.getsizeof(lru) + sum(sys.getsizeof(k) for k in lru)
    return total


def test_a_prompt_longer_than_the_lru_keeps_its_head() -> None:
    """Recording more blocks than a worker's LRU holds keeps the leading ones (the engine
    evicts a prompt's tail first) and no holder entry of the blocks that could not stay."""
    from picker.prefix.approx import ApproxPrefixIndex

    index = ApproxPrefixIndex(capacity_blocks=4, block_size=1)
    index.record_hashes([10, 11], "w")
    index.record_hashes(list(range(1, 10)), "w")  # 9 blocks into 4 places
    assert list(index._lru["w"]) == [4, 3, 2, 1]  # the head, leading block touched last
    assert set(index._holders.masks) == {1, 2, 3, 4}  # 10 and 11 evicted, 5-9 never kept


@pytest.mark.parametrize(
    ("held", "capacity", "fill", "fits"),
    [
        ({"w": 70}, {"w": 100}, 1.0, True),  # 70 + 20 blocks in 100
        ({"w": 70}, {"w": 100}, 0.85, False),  # 90 past 85
        ({}, {"w": 100}, 0.85, True),
        ({"w": 0}, {}, 1.0, False),  # capacity unknown: no room known
    ],
)
def test_fits(held: dict[str, int], capacity: dict[str, int], fill: float, fits: bool) -> None:
    from picker.prefix import PrefixMatch

    assert PrefixMatch(20, {}, held=held, capacity=capacity).fits("w", fill) is fits


def test_the_producer_reports_the_approximate_index_capacity() -> None:
    from picker.fleet.worker_spec import WorkerSpec
    from picker.prefix.producer import PrefixProducer, PrefixSettings
    from picker.routing.request import Api, RoutingRequest
    from tests.live import Fleet

    producer = PrefixProducer(PrefixSettings(enabled=True, block_size=16, capacity_blocks=300))
    fleet = Fleet([WorkerSpec(url="a:1", id="w")])
    request, prompt = producer.annotate(RoutingRequest(model="m", api=Api.CHAT,
                                                       prompt_text="a" * 160), fleet)
    assert request.prefix is not None and request.prefix.capacity == {"w": 300}
    producer.record(prompt, fleet[0])
    request, _ = producer.annotate(request, fleet)
    assert request.prefix is not None and request.prefix.held == {"w": 10}


class _PerBlockLru:
    """The approximate index's LRUs by their definition, one block at a time: each block of
    the prompt's leading `capacity`, last first, is touched or stored, and every store past
    the capacity evicts the least recently used block (`set_capacity` trims at once)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.capacity_of: dict[str, int] = {}
        self.lru: dict[str, OrderedDict[int, None]] = {}

    def record(self, hashes: list[int], worker: str) -> None:
        lru = self.lru.setdefault(worker, OrderedDict())
        capacity = self.capacity_of.get(worker, self.capacity)
        for block in reversed(hashes[:capacity]):
            if block in lru:
                lru.move_to_end(block)
                continue
            lru[block] = None
            if len(lru) > capacity:
                lru.popitem(last=False)

    def set_capacity(self, worker: str, blocks: int) -> None:
        self.capacity_of[worker] = max(1, blocks)
        lru = self.lru.get(worker)
        while lru is not None and len(lru) > max(1, blocks):
            lru.popitem(last=False)

    def masks(self, bits: dict[str, int]) -> dict[int, int]:
        masks: dict[int, int] = {}
        for worker, lru in self.lru.items():
            for block in lru:
                masks[block] = masks.get(block, 0) | bits[worker]
        return masks


_prompts = st.lists(st.integers(0, 30), max_size=14)
_ops = st.lists(st.one_of(
    st.tuples(st.just("record"), st.sampled_from("abc"), _prompts),
    st.tuples(st.just("capacity"), st.sampled_from("abc"), st.integers(0, 14))), max_size=40)


@settings(max_examples=300, deadline=None)
@given(capacity=st.integers(1, 12), ops=_ops)
def test_the_lru_of_each_worker_is_the_one_block_at_a_time_definition(
        capacity: int, ops: list[tuple[str, str, Any]]) -> None:
    """record_hashes evicts once the prompt is in, and set_capacity trims in one loop: the
    same blocks in the same order (and the same holders) as touching, storing and evicting
    block by block. Prompts repeat blocks (a chain cannot, short of a collision) to hold
    the claim to any list."""
    index = ApproxPrefixIndex(capacity_blocks=capacity, block_size=1)
    model = _PerBlockLru(capacity)
    for op, worker, arg in ops:
        if op == "record":
            index.record_hashes(arg, worker)
            model.record(arg, worker)
        else:
            index.set_capacity(worker, arg)
            model.set_capacity(worker, arg)
        assert {w: list(lru) for w, lru in index._lru.items()} == \
            {w: list(lru) for w, lru in model.lru.items()}
        bits = {w: index._holders.bit(w) for w in model.lru}
        assert index._holders.masks == model.masks(bits)
