"""The KV-event index: engine reports re-hashed into picker blocks, matched like the engine."""

from __future__ import annotations

import hashlib
import time

from hypothesis import given, settings
from hypothesis import strategies as st

from picker.prefix.index import PromptBlocks
from picker.prefix.kv_index import SyncPrefixIndex
from picker.prefix.kv_settings import KvEventSettings

B = 4  # tokens per engine block


def tokens(*blocks: int) -> list[int]:
    """Block i of the prompt is B copies of blocks[i]."""
    return [value for value in blocks for _ in range(B)]


def engine_hash(path: tuple[int, ...], salt: bytes = b"") -> bytes:
    """Some engine's hash of a block: any function works, the index never recomputes it."""
    return hashlib.sha256(salt + repr(path).encode()).digest()


def prompt(*blocks: int, model: str = "m") -> PromptBlocks:
    return PromptBlocks(model, tokens(*blocks), is_tokens=True)


def index(**settings: float) -> SyncPrefixIndex:
    return SyncPrefixIndex(KvEventSettings(**{"pending_secs": 0, **settings}))


def store(ix: SyncPrefixIndex, worker: str, *path: int, start: int = 0,
          salt: bytes = b"") -> bool:
    """Store blocks path[start:] of the chain `path`, as one BlockStored."""
    hashes = [engine_hash(path[:i + 1], salt) for i in range(start, len(path))]
    parent = engine_hash(path[:start], salt) if start else None
    return ix.stored(worker, hashes, parent, tokens(*path[start:]), B) == "stored"


def test_stored_chains_across_events_and_matches_leading_blocks() -> None:
    ix = index()
    assert store(ix, "a", 1, 2)
    assert store(ix, "a", 1, 2, 3, start=2)  # the child event names its parent's engine hash
    assert store(ix, "b", 1)
    match = ix.match(prompt(1, 2, 3, 9), ["a", "b", "c"])
    assert match.total_blocks == 4 and dict(match.matched) == {"a": 3, "b": 1}
    assert ix.match(prompt(1, 2, 3), ["b"]).blocks("a") == 0  # only candidates
    assert ix.blocks_of("a") == 3


def test_engines_with_different_hash_functions_agree() -> None:
    """vLLM with sha256 and SGLang with another seed: same tokens, same picker blocks."""
    ix = index()
    store(ix, "vllm", 1, 2, salt=b"seed-1")
    store(ix, "sglang", 1, 2, salt=b"other-seed")
    assert dict(ix.match(prompt(1, 2), ["vllm", "sglang"]).matched) == {"vllm": 2, "sglang": 2}


def test_removed_and_cleared() -> None:
    ix = index()
    store(ix, "a", 1, 2, 3)
    ix.removed("a", [engine_hash((1, 2))])
    assert ix.match(prompt(1, 2, 3), ["a"]).blocks("a") == 1  # a hole ends the prefix
    ix.removed("a", [b"never stored"])  # harmless
    ix.cleared("a")
    assert ix.match(prompt(1, 2, 3), ["a"]).matched == {} and ix.blocks_of("a") == 0
    assert ix._holders.masks == {}
    assert store(ix, "a", 1)  # usable again


def test_unknown_parent_and_inconsistent_token_counts_are_refused() -> None:
    ix = index()
    assert not store(ix, "a", 1, 2, start=1)
    assert ix.orphans == 1
    assert ix.stored("a", [b"h"], None, [1, 2, 3], B) == "invalid"  # 3 tokens, block of 4
    assert ix.stored("a", [b"h", b"i"], None, tokens(1), B) == "invalid"  # 2 hashes, 1 block
    assert ix.blocks_of("a") == 0


def test_offloaded_copy_keeps_a_block_held_until_both_are_gone() -> None:
    ix = index()
    h = engine_hash((1,))
    ix.stored("a", [h], None, tokens(1), B, medium="GPU")
    ix.stored("a", [h], None, tokens(1), B, medium="CPU")
    ix.removed("a", [h], medium="GPU")
    assert ix.match(prompt(1), ["a"]).blocks("a") == 1
    ix.removed("a", [h], medium="CPU")
    assert ix.match(prompt(1), ["a"]).blocks("a") == 0


def test_lora_blocks_match_only_requests_naming_the_adapter() -> None:
    ix = index()
    ix.stored("a", [b"x"], None, tokens(1), B, lora="sql-adapter")
    assert ix.match(prompt(1, model="sql-adapter"), ["a"]).blocks("a") == 1
    assert ix.match(prompt(1, model="base"), ["a"]).blocks("a") == 0


def test_blocks_hashed_with_extra_keys_never_match_plain_text() -> None:
    """Multimodal or cache_salt blocks: same token ids (placeholders), different content."""
    ix = index()
    ix.stored("a", [b"img"], None, tokens(1), B, extra_keys=[("image-sha", 0)])
    ix.stored("b", [b"txt"], None, tokens(1), B)
    assert dict(ix.match(prompt(1), ["a", "b"]).matched) == {"b": 1}


def test_character_prompts_match_nothing() -> None:
    ix = index()
    store(ix, "a", 1)
    assert ix.match(PromptBlocks("m", "x" * 16, is_tokens=False), ["a"]).matched == {}


def test_mixed_block_sizes_report_in_the_finest_blocks() -> None:
    ix = index()
    toks = list(range(32))
    ix.stored("big", [b"b0"], None, toks[:16], 16)
    ix.stored("small", [b"s0", b"s1"], None, toks[:8], 4)
    match = ix.match(PromptBlocks("m", toks, is_tokens=True), ["big", "small"])
    assert match.total_blocks == 8 and dict(match.matched) == {"big": 4, "small": 2}


def test_memory_bound_drops_the_oldest_blocks() -> None:
    ix = index(max_blocks_per_worker=3)
    store(ix, "a", 1, 2, 3, 4, 5)
    assert ix.blocks_of("a") == 3
    assert ix.match(prompt(1, 2, 3, 4, 5), ["a"]).blocks("a") == 0  # the head went first


def test_a_pick_is_pending_until_its_ttl_then_only_events_count() -> None:
    ix = index(pending_secs=0.05)
    ix.expect("a", B)  # block size known (configured) before any event
    ix.record(prompt(1, 2), "a")
    assert ix.match(prompt(1, 2), ["a"]).blocks("a") == 2
    store(ix, "a", 1)  # the engine confirms the first block
    time.sleep(0.06)
    assert ix.match(prompt(1, 2), ["a"]).blocks("a") == 1
    view = ix._views["a"]
    assert view.held == {view.prefixes[B, engine_hash((1,))][0]: 1}


def test_pending_of_a_cleared_worker_is_forgotten_not_double_released() -> None:
    ix = index(pending_secs=0.01)
    ix.expect("a", B)
    ix.record(prompt(1), "a")
    ix.cleared("a")
    store(ix, "a", 1)
    time.sleep(0.02)
    assert ix.match(prompt(1), ["a"]).blocks("a") == 1


def test_removed_worker_is_gone() -> None:
    ix = index()
    store(ix, "a", 1)
    ix.remove_worker("a")
    assert ix.match(prompt(1), ["a"]).matched == {} and "a" not in ix._views


# Model-based check: any sequence of stores, removals and clears leaves the index matching
# exactly what a plain set of token paths says the engine holds.
_paths = st.lists(st.integers(1, 3), min_size=1, max_size=4).map(tuple)
_ops = st.lists(st.tuples(st.sampled_from(["store", "remove", "clear"]), _paths,
                          st.sampled_from(["a", "b"])), max_size=40)


@settings(max_examples=200, deadline=None)
@given(_ops)
def test_index_agrees_with_a_reference_model(ops: list[tuple[str, tuple[int, ...], str]]) -> None:
    ix = index()
    held: dict[str, set[tuple[int, ...]]] = {"a": set(), "b": set()}
    for op, path, worker in ops:
        if op == "store":
            start = len(path) - 1
            parent_known = start == 0 or path[:start] in held[worker]
            assert store(ix, worker, *path, start=start) == parent_known
            if parent_known:
                held[worker].add(path)
        elif op == "remove":
            ix.removed(worker, [engine_hash(path)])
            held[worker].discard(path)
        else:
            ix.cleared(worker)
            held[worker].clear()
    for query in [(1, 2, 3, 1), (2, 2, 2, 2), (3, 1, 2, 3), (1, 1, 1, 1)]:
        match = ix.match(prompt(*query), ["a", "b"])
        for worker, paths in held.items():
            depth = 0
            while depth < len(query) and query[:depth + 1] in paths:
                depth += 1
            assert match.blocks(worker) == depth, (worker, query, paths)


# -- vLLM 0.33 shapes: hybrid groups, masked sliding-window stores, offload placeholders, LoRA


def test_a_removal_in_one_group_leaves_the_other_groups_copy() -> None:
    ix = index()
    path = (1, 2)
    hashes = [engine_hash(path[:1]), engine_hash(path)]
    for group in (0, 1):  # vLLM hashes before tagging the group: same hashes in both groups
        assert ix.stored("a", hashes, None, tokens(*path), B, group=group) == "stored"
    ix.removed("a", hashes[1:], group=1)
    assert ix.match(prompt(1, 2), ["a"]).blocks("a") == 2
    ix.removed("a", hashes[1:], group=0)
    assert ix.match(prompt(1, 2), ["a"]).blocks("a") == 1


def test_a_masked_sliding_window_store_is_placed_by_hash_not_counted_as_orphan() -> None:
    """Hashes for the kept blocks only, token ids over the whole range (block_pool.py)."""
    ix = index()
    path = (1, 2, 3, 4)
    hashes = [engine_hash(path[:i + 1]) for i in range(4)]
    assert ix.stored("a", hashes, None, tokens(*path), B, group=0) == "stored"
    # group 1 keeps only the last block of the window; its parent was never kept there
    assert ix.stored("a", hashes[3:], None, tokens(*path), B, group=1) == "stored"
    assert ix.orphans == 0 and ix.blocks_of("a") == 5
    ix.removed("a", hashes[3:], group=0)  # the full-attention copy goes; the window's stays
    assert ix.match(prompt(*path), ["a"]).blocks("a") == 4
    # a masked store nobody else announced is tracked, matches nothing, removes cleanly
    assert ix.stored("b", [b"x"], None, tokens(1, 2), B, group=1) == "unplaced"
    ix.removed("b", [b"x"], group=1)
    assert ix.blocks_of("b") == 0


def test_an_offload_placeholder_is_a_copy_of_a_known_block_in_another_tier() -> None:
    """The offloading connector's legacy store: token_ids [], block_size 0, medium CPU."""
    ix = index()
    store(ix, "a", 1, 2)
    last = engine_hash((1, 2))
    assert ix.stored("a", [last], None, [], 0, medium="CPU", group=0) == "stored"
    ix.removed("a", [last], medium="GPU")  # evicted from the GPU, still on the CPU
    assert ix.match(prompt(1, 2), ["a"]).blocks("a") == 2
    ix.removed("a", [last], medium="CPU")
    assert ix.match(prompt(1, 2), ["a"]).blocks("a") == 1
    assert ix.stored("a", [b"never seen"], None, [], 0, medium="CPU") == "unplaced"
    assert ix.orphans == 0


def test_lora_blocks_match_requests_naming_the_adapter_only() -> None:
    """vLLM 0.33 lists the LoRA name first in every block's extra keys."""
    ix = index()
    hashes = [engine_hash((1,), b"sql"), engine_hash((1, 2), b"sql")]
    assert ix.stored("a", hashes, None, tokens(1, 2), B, lora="sql",
                     extra_keys=[["sql"], ["sql"]]) == "stored"
    assert ix.match(prompt(1, 2, model="sql"), ["a"]).blocks("a") == 2
    assert ix.match(prompt(1, 2, model="base"), ["a"]).blocks("a") == 0
    # with a salt too, the blocks are the salted request's alone
    ix.stored("b", [b"s"], None, tokens(1), B, lora="sql", extra_keys=[["sql", "salt"]])
    assert ix.match(prompt(1, model="sql"), ["b"]).blocks("b") == 0


def test_a_sglang_salted_store_never_matches_a_plain_request() -> None:
    ix = index()
    assert ix.stored("a", [7], None, tokens(1), B, salt="tenant") == "stored"
    assert ix.match(prompt(1), ["a"]).blocks("a") == 0
