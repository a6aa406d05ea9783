"""Decoding vLLM/SGLang KV-event batches: both encodings, both hash types, tolerance."""

from __future__ import annotations

import contextlib

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from picker.prefix.kv_wire import (
    WIRE,
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    decode_batch,
)

pack = msgspec.msgpack.encode


@pytest.mark.parametrize("encoding", ["array", "map"])
def test_round_trip_of_every_event_kind(encoding: str) -> None:
    wire = WIRE[encoding]  # type: ignore[index]
    batch = wire.batch(ts=1.5, data_parallel_rank=2, events=[
        wire.stored(block_hashes=[1, b"\x00" * 32], parent_block_hash=None,
                    token_ids=[1, 2, 3, 4], block_size=2, lora_name="ad", medium="GPU"),
        wire.removed(block_hashes=[(1 << 64) - 1], medium="CPU"),
        wire.cleared(),
    ])
    decoded = decode_batch(wire.encode(batch))
    assert decoded.data_parallel_rank == 2 and decoded.skipped == 0
    stored, removed, cleared = decoded.events
    assert isinstance(stored, BlockStored) and stored.block_hashes == [1, b"\x00" * 32]
    assert (stored.token_ids, stored.block_size, stored.lora_name) == ([1, 2, 3, 4], 2, "ad")
    assert isinstance(removed, BlockRemoved) and removed.medium == "CPU"
    assert isinstance(cleared, AllBlocksCleared)


def test_vllm_shaped_array_batch_with_trailing_fields_newer_than_ours() -> None:
    """Positional, tag first; vLLM later appended extra_keys, group_idx and spec fields."""
    payload = pack([1.0, [
        ["BlockStored", [7, 8], 6, list(range(32)), 16, None, "GPU", None, None, 0, "full", 4],
        ["BlockRemoved", [7], "GPU", 0],
        ["AllBlocksCleared"],
    ]])
    decoded = decode_batch(payload)
    assert decoded.data_parallel_rank is None
    assert [type(e).__name__ for e in decoded.events] == [
        "_ArrayBlockStored", "_ArrayBlockRemoved", "_ArrayAllBlocksCleared"]
    assert decoded.events[0].parent_block_hash == 6  # type: ignore[union-attr]


def test_map_batch_with_unknown_keys_and_missing_optional_fields() -> None:
    payload = pack({"ts": 2, "events": [
        {"type": "BlockStored", "block_hashes": [b"ab"], "token_ids": [1], "block_size": 1,
         "kv_cache_spec_kind": "full"},
        {"type": "BlockRemoved", "block_hashes": [b"ab"]},
    ], "data_parallel_rank": 0, "future": True})
    decoded = decode_batch(payload)
    assert decoded.skipped == 0 and len(decoded.events) == 2
    assert decoded.events[0].parent_block_hash is None  # type: ignore[union-attr]


@pytest.mark.parametrize("payload, kept, skipped", [
    (pack([1.0, [["BlockRemoved", [1]], ["NewKind", 1, 2], ["BlockRemoved", "x"]]]), 1, 2),
    (pack({"ts": 1.0, "events": [{"type": "X"}, {"type": "AllBlocksCleared"}]}), 1, 1),
    (pack([1.0, [], 0]), 0, 0),
])
def test_one_bad_event_costs_that_event_only(payload: bytes, kept: int, skipped: int) -> None:
    decoded = decode_batch(payload)
    assert (len(decoded.events), decoded.skipped) == (kept, skipped)


@pytest.mark.parametrize("payload, message", [
    (b"", "not msgpack"),
    (b"\xc1", "not msgpack"),
    (pack(5), "not an EventBatch"),
    (pack({"ts": 1.0}), "not an EventBatch"),
    (pack([1.0, 5]), "events is a int"),
    (pack([1.0, [], "rank"]), "data_parallel_rank"),
])
def test_what_is_not_a_batch_is_a_value_error_saying_why(payload: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        decode_batch(payload)


@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_escape_as_another_exception(payload: bytes) -> None:
    with contextlib.suppress(ValueError):
        decode_batch(payload)


_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=5)
    | st.binary(max_size=8) | st.sampled_from(["BlockStored", "BlockRemoved", "type"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner,
                                                                max_size=4),
    max_leaves=20)


@given(st.lists(_values, max_size=4), st.booleans())
def test_well_formed_msgpack_of_any_shape_decodes_or_says_why(events: list[object],
                                                              as_map: bool) -> None:
    payload = pack({"ts": 1.0, "events": events} if as_map else [1.0, events])
    try:
        decoded = decode_batch(payload)
    except ValueError:
        return
    assert len(decoded.events) + decoded.skipped == len(events)
