"""Decoding KV-event batches as the engines encode them: vLLM 0.33, vLLM 0.11, SGLang 0.5.23.

Bytes come from structs declared exactly as each engine declares them (tests/kv_engines.py),
not from the picker's own decoder structs, so a decoder that only reads itself fails here.
"""

from __future__ import annotations

import contextlib

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from picker.prefix.kv_wire import AllBlocksCleared, BlockRemoved, BlockStored, decode_batch
from picker_sim.kv_formats import WIRE
from tests import kv_engines as eng
from tests.kv_engines import sglang_0_5_23 as sglang
from tests.kv_engines import vllm_0_11 as v011
from tests.kv_engines import vllm_0_33 as v033

pack = msgspec.msgpack.encode


def test_vllm_0_33_bytes_are_a_positional_batch_of_tagged_maps() -> None:
    """The shape spelled out by hand: what the issue found vLLM 0.33 sending."""
    batch = v033.EventBatch(1.5, [v033.BlockStored(
        [b"\x01"], None, [7, 7], 2, None, "GPU", None, extra_keys=[None], group_idx=0)], 0)
    ts, (event,), rank = msgspec.msgpack.decode(pack(batch))
    assert (ts, rank) == (1.5, 0)
    assert list(event.items()) == [  # key order as sent
        ("type", "BlockStored"), ("block_hashes", [b"\x01"]), ("parent_block_hash", None),
        ("token_ids", [7, 7]), ("block_size", 2), ("lora_id", None), ("medium", "GPU"),
        ("lora_name", None), ("extra_keys", [None]), ("group_idx", 0)]


@pytest.mark.parametrize("engine", eng.ENGINES, ids=lambda e: e.name)
def test_every_engine_format_decodes_every_event_kind(engine: eng.Engine) -> None:
    payload = engine.batch(2, [
        engine.stored([1, b"\x00" * 32], 5, [1, 2, 3, 4], 2, medium="GPU"),
        engine.removed([(1 << 64) - 1], medium="CPU"),
        engine.cleared(),
    ])
    decoded = decode_batch(payload)
    assert decoded.data_parallel_rank == 2 and decoded.skipped == 0
    stored, removed, cleared = decoded.events
    assert isinstance(stored, BlockStored) and stored.block_hashes == [1, b"\x00" * 32]
    assert (stored.parent_block_hash, stored.token_ids, stored.block_size) == (5, [1, 2, 3, 4], 2)
    assert isinstance(removed, BlockRemoved) and removed.block_hashes == [(1 << 64) - 1]
    assert isinstance(cleared, AllBlocksCleared)
    if engine.has_medium:
        assert (stored.medium, removed.medium) == ("GPU", "CPU")


def test_every_newer_vllm_field_is_read() -> None:
    event = v033.BlockStored(
        [b"a", b"b"], b"p", list(range(8)), 4, 3, "CPU", "sql", extra_keys=[["sql", "salt"], None],
        group_idx=1, kv_cache_spec_kind="sliding_window", kv_cache_spec_sliding_window=128,
        locality="LOCAL", ownership="tier2", session_id="s1", lookahead_token_ids=[[9], [9]])
    removed = v033.BlockRemoved([b"a"], "CPU", group_idx=1, locality="REMOTE", ownership="o")
    decoded = decode_batch(pack(v033.EventBatch(0.0, [event, removed], 1)))
    stored, gone = decoded.events
    assert isinstance(stored, BlockStored) and isinstance(gone, BlockRemoved)
    assert (stored.lora_id, stored.lora_name, stored.extra_keys) == (3, "sql", [["sql", "salt"],
                                                                               None])
    assert (stored.group_idx, stored.kv_cache_spec_kind, stored.kv_cache_spec_sliding_window,
            stored.locality, stored.ownership, stored.session_id,
            stored.lookahead_token_ids) == (1, "sliding_window", 128, "LOCAL", "tier2", "s1",
                                            [[9], [9]])
    assert (gone.group_idx, gone.locality, gone.ownership) == (1, "REMOTE", "o")


def test_sglang_fields_and_its_nil_rank() -> None:
    event = sglang.BlockStored([11], None, [1, 2], 2, None, medium="CPU_PINNED",
                                   cache_salt="s", session_id="x", lora_name="ad")
    decoded = decode_batch(pack(sglang.EventBatch(0.0, [event])))  # attn_dp_rank: nil
    stored = decoded.events[0]
    assert decoded.data_parallel_rank is None and isinstance(stored, BlockStored)
    assert (stored.cache_salt, stored.lora_name, stored.medium) == ("s", "ad", "CPU_PINNED")


@pytest.mark.parametrize("encoding", ["map", "array"])
def test_the_simulator_encodes_byte_for_byte_as_the_engine(encoding: str) -> None:
    wire = WIRE[encoding]  # type: ignore[index]
    engine = v033 if encoding == "map" else v011
    ours = wire.batch([wire.stored_event([b"h"], None, [1, 2], 2),
                       wire.removed_event([b"h"]), wire.cleared()], 3.25, 1)
    if encoding == "map":
        theirs = [engine.BlockStored([b"h"], None, [1, 2], 2, None, "GPU", None,
                                     extra_keys=[None], group_idx=0),
                  engine.BlockRemoved([b"h"], "GPU", group_idx=0), engine.AllBlocksCleared()]
    else:
        theirs = [engine.BlockStored([b"h"], None, [1, 2], 2, None, "GPU"),
                  engine.BlockRemoved([b"h"], "GPU"), engine.AllBlocksCleared()]
    assert ours == pack(engine.EventBatch(3.25, theirs, 1))


def test_unknown_future_fields_and_trailing_items_are_ignored() -> None:
    payload = pack([1.0, [
        {"type": "BlockStored", "block_hashes": [1], "parent_block_hash": None,
         "token_ids": [1], "block_size": 1, "lora_id": None, "medium": "GPU",
         "lora_name": None, "from_the_future": {"x": 1}},
        ["BlockRemoved", [7], "GPU", 0, "LOCAL", None, "future", 1],
    ], 0, "future batch field"])
    decoded = decode_batch(payload)
    assert len(decoded.events) == 2 and decoded.skipped == 0


@pytest.mark.parametrize("payload, kept, skipped", [
    (pack([1.0, [["BlockRemoved", [1]], ["NewKind", 1, 2], ["BlockRemoved", "x"]]]), 1, 2),
    (pack([1.0, [{"type": "X"}, {"type": "AllBlocksCleared"}, 5]]), 1, 2),
    (pack([1.0, [{"type": "BlockRemoved", "block_hashes": [1]}, ["AllBlocksCleared"]]]), 2, 0),
    (pack([1.0, [], 0]), 0, 0),
])
def test_one_bad_event_costs_that_event_only(payload: bytes, kept: int, skipped: int) -> None:
    decoded = decode_batch(payload)
    assert (len(decoded.events), decoded.skipped) == (kept, skipped)


@pytest.mark.parametrize("payload, message", [
    (b"", "not msgpack"),
    (b"\xc1", "not msgpack"),
    (pack(5), "not an EventBatch"),
    (pack({"ts": 1.0, "events": []}), "not an EventBatch"),
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


@given(st.lists(_values, max_size=4))
def test_well_formed_msgpack_of_any_shape_decodes_or_says_why(events: list[object]) -> None:
    try:
        decoded = decode_batch(pack([1.0, events]))
    except ValueError:
        return
    assert len(decoded.events) + decoded.skipped == len(events)


def test_sglang_main_salted_block_stored_keeps_its_salt() -> None:
    """SGLang main: a salted request's BlockStored is BlockStoredWithMetadata, whose trailing
    `{"cache_salt": ...}` map sits where vLLM's positional form has lora_name."""
    from tests.kv_engines import sglang_main as sg

    salted = sg.BlockStoredWithMetadata([11, 12], None, list(range(8)), 4, None, "GPU",
                                        metadata=sg.BlockStoredMetadata("tenant-a"))
    plain = sg.BlockStored([13], 12, list(range(4)), 4, None, "GPU")
    payload = msgspec.msgpack.Encoder().encode(sg.EventBatch(1.0, [salted, plain], 1))
    batch = decode_batch(payload)
    assert batch.skipped == 0 and batch.data_parallel_rank == 1
    first, second = batch.events
    assert isinstance(first, BlockStored) and isinstance(second, BlockStored)
    assert (first.block_hashes, first.cache_salt, first.lora_name) == ([11, 12], "tenant-a", None)
    assert (second.parent_block_hash, second.cache_salt, second.medium) == (12, None, "GPU")
