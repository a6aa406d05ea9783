"""The run cache (a prompt as runs of blocks) does what the block cache does block by block.

picker_sim.cache.BlockCache is checked against the definition (test_sim_cache_model); here
random prompts of runs - the same key at different lengths, repeated keys, prompts that do
not fit, evictions cutting runs, releases in any order - go through both, the block cache
seeing each run's blocks one by one, and every hit, size and cached block must agree.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from picker_sim.cache import BlockCache, Claim
from picker_sim.run_cache import RunCache, RunClaim

_KEYS = range(6)
_RUN = st.tuples(st.sampled_from(_KEYS), st.integers(1, 5))
_OPERATION = st.one_of(
    st.tuples(st.just("acquire"), st.lists(_RUN, max_size=5)),
    st.tuples(st.just("release"), st.integers(0, 1000)),
)


def _blocks(runs: list[tuple[int, int]]) -> list[int]:
    """The engine blocks of `runs`: block i of key k is k * 100 + i."""
    return [key * 100 + i for key, n in runs for i in range(n)]


def _agree(runs: RunCache, blocks: BlockCache) -> None:
    assert len(runs) == len(blocks)
    for key in _KEYS:
        for n in range(1, 6):
            assert runs.cached_prefix([(key, n)]) == blocks.cached_prefix(_blocks([(key, n)]))


@settings(max_examples=500, deadline=None)
@given(capacity=st.integers(1, 20), operations=st.lists(_OPERATION, max_size=60))
def test_runs_match_blocks_one_by_one(capacity: int,
                                      operations: list[tuple[str, object]]) -> None:
    runs, blocks = RunCache(capacity), BlockCache(capacity)
    held: list[tuple[RunClaim, Claim]] = []
    for name, argument in operations:
        if name == "acquire":
            assert isinstance(argument, list)
            claim, expected = runs.acquire(argument), blocks.acquire(_blocks(argument))
            assert claim.hit_blocks == expected.hit_blocks
            held.append((claim, expected))
        elif held:
            assert isinstance(argument, int)
            claim, expected = held.pop(argument % len(held))
            runs.release(claim)
            blocks.release(expected)
        _agree(runs, blocks)
    for claim, expected in held:
        runs.release(claim)
        blocks.release(expected)
    _agree(runs, blocks)
    # With nothing pinned, one prompt of new blocks filling the cache evicts the same blocks.
    fill = [(9, capacity)]
    assert runs.acquire(fill).hit_blocks == blocks.acquire(_blocks(fill)).hit_blocks == 0
    _agree(runs, blocks)
