"""The picker's own engine-signal messages (picker/fleet/proto/engine_signals.proto) against
smg-grpc-proto 0.4.28's generated classes, byte for byte; and GetLoads read into EngineLoad."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.unknown_fields import UnknownFieldSet
from smg_grpc_proto.generated import common_pb2 as common
from smg_grpc_proto.generated import sglang_scheduler_pb2 as sglang
from smg_grpc_proto.generated import vllm_engine_pb2 as vllm

from picker.fleet._pb import engine_signals_pb2 as ours
from picker.fleet.grpc_load import load_from_loads

# Ours -> the upstream modules whose message of the same name it must match. GetModelInfo and
# GetServerInfo are read from SGLang's service only (picker.fleet.grpc_calls).
COUNTERPARTS: dict[str, tuple[Any, ...]] = {
    "HealthCheckRequest": (sglang, vllm), "HealthCheckResponse": (sglang, vllm),
    "GetModelInfoRequest": (sglang,), "GetModelInfoResponse": (sglang,),
    "GetServerInfoRequest": (sglang,), "GetServerInfoResponse": (sglang,),
    "GetLoadsRequest": (sglang, vllm), "GetLoadsResponse": (sglang, vllm),
    "SchedulerLoad": (sglang, vllm),
    **{name: (common,) for name in (
        "GetTokenizerRequest", "GetTokenizerChunk", "SubscribeKvEventsRequest", "KvEventBatch",
        "EngineLoad", "KvCacheEvent", "KvBlocksStored", "KvBlockExtraKey", "KvMultimodalKey",
        "KvBlock", "KvBlocksRemoved", "KvCacheCleared")},
}
_BLOCK = {"block_hash": -2**63, "token_ids": [0, 2**32 - 1, 7], "block_size": 3,
          "lora_id": 2**40, "extra_keys": [{"text": "adapter"}, {"blob": "AAE="},
                                           {"number": -5},
                                           {"multimodal": {"identifier": "img", "offset": 4}}]}
_STORED = {"blocks": [_BLOCK, {"block_hash": 2**63 - 1, "token_ids": [1, 2, 3],
                               "block_size": 3}],
           "parent_block_hash": 0, "tier": "KV_CACHE_TIER_HOST", "medium": "CPU",
           "group_idx": 0, "locality": "KV_CACHE_LOCALITY_LOCAL", "lora_name": "a",
           "cache_salt": "s"}
_REMOVED = {"block_hashes": [-1, 1], "tier": "KV_CACHE_TIER_DEVICE", "medium": "GPU",
            "group_idx": 2, "locality": "KV_CACHE_LOCALITY_REMOTE"}
# One message of each type with every field set to a value no default shares.
SAMPLES: dict[str, dict[str, Any]] = {
    "HealthCheckRequest": {},
    "HealthCheckResponse": {"healthy": True, "message": "warming up é"},
    "GetModelInfoRequest": {},
    "GetModelInfoResponse": {"tokenizer_path": "/models/llama", "served_model_name": "llama-3"},
    "GetServerInfoRequest": {},
    "GetServerInfoResponse": {"server_args": {"dp_size": 4, "disaggregation_mode": "prefill",
                                              "nested": {"list": [1, "two", None, True]}}},
    "GetLoadsRequest": {"dp_rank": 0, "include": ["core", "queues"]},
    "GetLoadsResponse": {"loads": [
        {"dp_rank": 0, "num_running_reqs": 3, "num_waiting_reqs": 7, "token_usage": 0.25},
        {"dp_rank": 1, "num_running_reqs": -1, "num_waiting_reqs": 2**31 - 1,
         "token_usage": 1e-300}]},
    "SchedulerLoad": {"dp_rank": 5, "num_running_reqs": 2, "num_waiting_reqs": 1,
                      "token_usage": 0.5},
    "GetTokenizerRequest": {},
    "GetTokenizerChunk": {"data": "UEsDBA==", "sha256": "ab" * 32},
    "SubscribeKvEventsRequest": {"start_sequence_number": 2**64 - 1},
    "KvEventBatch": {"sequence_number": 9, "dp_rank": 0, "load": {"load_only": True},
                     "events": [{"stored": _STORED}, {"removed": _REMOVED}, {"cleared": {}}]},
    "EngineLoad": {"load_only": True},
    "KvCacheEvent": {"stored": _STORED},
    "KvBlocksStored": _STORED,
    "KvBlockExtraKey": {"multimodal": {"identifier": "img", "offset": -1}},
    "KvMultimodalKey": {"identifier": "img", "offset": 2**40},
    "KvBlock": _BLOCK,
    "KvBlocksRemoved": _REMOVED,
    "KvCacheCleared": {},
}
PAIRS = [(name, module) for name, modules in COUNTERPARTS.items() for module in modules]


def _ids(pair: tuple[str, Any]) -> str:
    return f"{pair[0]}-{pair[1].__name__.rsplit('.', 1)[-1]}"


def _build(cls: Any, values: dict[str, Any]) -> Any:
    return json_format.ParseDict(values, cls())


def test_every_message_is_listed() -> None:
    assert set(ours.DESCRIPTOR.message_types_by_name) == set(COUNTERPARTS) == set(SAMPLES)


@pytest.mark.parametrize("pair", PAIRS, ids=[_ids(p) for p in PAIRS])
def test_fields_keep_the_upstream_numbers_and_types(pair: tuple[str, Any]) -> None:
    name, module = pair
    mine = ours.DESCRIPTOR.message_types_by_name[name]
    theirs = module.DESCRIPTOR.message_types_by_name[name]
    for field in mine.fields:
        upstream: FieldDescriptor = theirs.fields_by_name[field.name]
        assert (field.number, field.type, field.is_repeated, field.has_presence) == (
            upstream.number, upstream.type, upstream.is_repeated, upstream.has_presence), \
            f"{name}.{field.name}"
        if field.message_type is not None:
            assert field.message_type.name == upstream.message_type.name


@pytest.mark.parametrize("pair", PAIRS, ids=[_ids(p) for p in PAIRS])
def test_messages_round_trip_byte_for_byte(pair: tuple[str, Any]) -> None:
    name, module = pair
    mine = _build(getattr(ours, name), SAMPLES[name])
    wire = mine.SerializeToString(deterministic=True)
    upstream = getattr(module, name).FromString(wire)
    assert upstream.SerializeToString(deterministic=True) == wire
    assert len(UnknownFieldSet(upstream)) == 0  # every byte was a field it knows
    # And back: what the engine encodes, the picker decodes to the same values.
    theirs = _build(getattr(module, name), SAMPLES[name])
    back = getattr(ours, name).FromString(theirs.SerializeToString(deterministic=True))
    assert back == mine
    assert back.SerializeToString(deterministic=True) == wire


def _loads(*loads: tuple[int, int, int, float]) -> ours.GetLoadsResponse:
    return ours.GetLoadsResponse(loads=[
        ours.SchedulerLoad(dp_rank=rank, num_running_reqs=running, num_waiting_reqs=waiting,
                           token_usage=usage) for rank, running, waiting, usage in loads])


@pytest.mark.parametrize(("answer", "rank", "expected"), [
    (_loads((0, 3, 7, 0.25)), None, (3.0, 7.0, 0.25)),
    # The whole engine: counts summed over ranks, the usage (a fraction) averaged.
    (_loads((0, 3, 7, 0.25), (1, 1, 1, 0.75)), None, (4.0, 8.0, 0.5)),
    # One rank reads its own.
    (_loads((0, 3, 7, 0.25), (1, 1, 1, 0.75)), 1, (1.0, 1.0, 0.75)),
    # Nothing of this rank, or nothing at all: nothing known.
    (_loads((0, 3, 7, 0.25)), 2, (None, None, None)),
    (_loads(), None, (None, None, None)),
    (_loads((0, 1, 2, float("nan"))), None, (1.0, 2.0, None)),
])
def test_get_loads_fills_the_engine_load(answer: ours.GetLoadsResponse, rank: int | None,
                                         expected: tuple[float | None, ...]) -> None:
    load = load_from_loads(answer, 12.5, rank)
    assert (load.running, load.waiting, load.kv_usage) == expected
    assert load.scraped_at == 12.5
