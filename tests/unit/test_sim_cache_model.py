"""The simulator's block cache, handled in bulk, does what handling each block in turn does.

The reference below is the definition (vLLM-style prefix caching: pins, LRU among unpinned
blocks, a prompt's tail not kept when everything cached is pinned), written the obvious way;
random operation sequences on a small cache reach every path of the fast one: evictions
meeting pinned blocks, a prompt whose own later blocks are the oldest, prompts that do not
fit, repeated blocks, clearing.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from hypothesis import given, settings
from hypothesis import strategies as st

from picker_sim.cache import BlockCache, Claim


class _Reference:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.blocks: OrderedDict[int, int] = OrderedDict()  # hash -> pins, LRU first

    def acquire(self, hashes: Sequence[int]) -> Claim:
        hit = 0
        for block in hashes:
            if block not in self.blocks:
                break
            hit += 1
        claim = Claim(hit_blocks=hit)
        for block in hashes:
            if block in self.blocks:
                self.blocks[block] += 1
                self.blocks.move_to_end(block)
                claim.pinned.append(block)
                continue
            if len(self.blocks) >= self.capacity:
                victim = next((b for b, pins in self.blocks.items() if pins == 0), None)
                if victim is None:
                    break
                del self.blocks[victim]
                claim.evicted.append(victim)
            self.blocks[block] = 1
            claim.pinned.append(block)
            claim.stored.append(block)
        return claim

    def release(self, claim: Claim) -> None:
        for block in claim.pinned:
            self.blocks[block] -= 1

    def clear(self) -> list[int]:
        dropped = [block for block, pins in self.blocks.items() if pins == 0]
        for block in dropped:
            del self.blocks[block]
        return dropped


def _seen(claim: Claim) -> tuple[int, list[int], list[int], list[int]]:
    """What a claim tells the engine and its KV event publisher."""
    return claim.hit_blocks, claim.pinned, claim.stored, claim.evicted


_PROMPT = st.lists(st.integers(0, 30), max_size=12)
_OPERATION = st.one_of(
    st.tuples(st.just("acquire"), _PROMPT),
    st.tuples(st.just("release"), st.integers(0, 1000)),
    st.tuples(st.just("clear"), st.just(0)),
)


@settings(max_examples=400, deadline=None)
@given(capacity=st.integers(1, 16), operations=st.lists(_OPERATION, max_size=60))
def test_bulk_cache_matches_block_by_block(capacity: int,
                                           operations: list[tuple[str, object]]) -> None:
    cache, reference = BlockCache(capacity), _Reference(capacity)
    held: list[tuple[Claim, Claim]] = []
    for name, argument in operations:
        if name == "acquire":
            assert isinstance(argument, list)
            claim, expected = cache.acquire(argument), reference.acquire(argument)
            assert _seen(claim) == _seen(expected)
            held.append((claim, expected))
        elif name == "release" and held:
            assert isinstance(argument, int)
            claim, expected = held.pop(argument % len(held))
            cache.release(claim)
            reference.release(expected)
        elif name == "clear":
            assert cache.clear() == reference.clear()
        assert len(cache) == len(reference.blocks)
    for claim, expected in held:
        cache.release(claim)
        reference.release(expected)
    assert cache.clear() == reference.clear()


def test_a_long_prompt_after_a_full_cache_evicts_the_oldest_unpinned_blocks() -> None:
    cache = BlockCache(capacity_blocks=6)
    old = cache.acquire([1, 2, 3])
    pinned = cache.acquire([4, 5, 6])  # stays pinned: its blocks are skipped, not evicted
    cache.release(old)
    claim = cache.acquire([7, 8, 9, 10])
    assert claim.evicted == [1, 2, 3] and claim.stored == [7, 8, 9]  # 10: no room, not kept
    assert claim.pinned == [7, 8, 9]
    cache.release(pinned)
    cache.release(claim)
    assert cache.acquire([4, 11]).evicted == [5]
