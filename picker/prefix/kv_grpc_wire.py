"""KV events as a gRPC engine streams them, turned into the events the ZMQ path decodes.

SubscribeKvEvents (smg-grpc-proto 0.4.28 common.proto:19-277) streams KvEventBatch messages:
the engine's servicer decodes the publisher's msgpack batches and re-encodes each event
(smg_grpc_servicer 0.14.1 kv_relay.py:584-665): a store lists its blocks one KvBlock each
(hash, that block's token ids, its size), a hash is the engine's 64-bit pattern as an int64,
and the medium also travels as a tier. Turned back into picker.prefix.kv_wire's BlockStored,
BlockRemoved and AllBlocksCleared, a batch goes through the same EventApplier as a ZMQ one.
Blocks another engine holds (locality REMOTE, common.proto:207-214) are skipped, as a store
whose blocks disagree on their size (the applier would misplace its tokens).
"""

from __future__ import annotations

from typing import Any

from picker.fleet._pb import engine_signals_pb2 as pb
from picker.prefix.kv_wire import (
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    DecodedBatch,
    KvEvent,
)

__all__ = ["decode_grpc_batch"]

# The relay's tier of each medium, reversed (kv_relay.py:126-139), for a message without one.
_MEDIUM_OF_TIER = {pb.KV_CACHE_TIER_DEVICE: "GPU", pb.KV_CACHE_TIER_HOST: "CPU",
                   pb.KV_CACHE_TIER_DISK: "DISK", pb.KV_CACHE_TIER_EXTERNAL: "EXTERNAL"}


def decode_grpc_batch(batch: pb.KvEventBatch) -> DecodedBatch:
    events: list[KvEvent] = []
    for event in batch.events:
        kind = event.WhichOneof("data")
        converted: KvEvent | None = None
        if kind == "stored":
            converted = _stored(event.stored)
        elif kind == "removed":
            converted = _removed(event.removed)
        elif kind == "cleared":
            converted = AllBlocksCleared()
        if converted is not None:
            events.append(converted)
    rank = batch.dp_rank if batch.HasField("dp_rank") else None
    return DecodedBatch(events, rank, len(batch.events) - len(events))


def _stored(stored: pb.KvBlocksStored) -> BlockStored | None:
    blocks = stored.blocks
    sizes = {block.block_size for block in blocks}
    if _remote(stored) or len(sizes) != 1:
        return None
    extra = [[_extra_key(key) for key in block.extra_keys] or None for block in blocks]
    lora_id = blocks[0].lora_id if blocks[0].HasField("lora_id") else None
    return BlockStored(
        block_hashes=[block.block_hash for block in blocks],
        parent_block_hash=_optional(stored, "parent_block_hash"),
        token_ids=[token for block in blocks for token in block.token_ids],
        block_size=sizes.pop(), lora_id=lora_id, medium=_medium(stored),
        lora_name=_optional(stored, "lora_name"),
        extra_keys=extra if any(extra) else None, group_idx=_optional(stored, "group_idx"),
        cache_salt=_optional(stored, "cache_salt"))


def _removed(removed: pb.KvBlocksRemoved) -> BlockRemoved | None:
    if _remote(removed):
        return None
    return BlockRemoved(block_hashes=list(removed.block_hashes), medium=_medium(removed),
                        group_idx=_optional(removed, "group_idx"))


def _remote(event: pb.KvBlocksStored | pb.KvBlocksRemoved) -> bool:
    return event.HasField("locality") and event.locality == pb.KV_CACHE_LOCALITY_REMOTE


def _medium(event: pb.KvBlocksStored | pb.KvBlocksRemoved) -> str | None:
    if event.HasField("medium"):
        return event.medium
    return _MEDIUM_OF_TIER.get(event.tier) if event.HasField("tier") else None


def _optional(message: Any, name: str) -> Any:
    return getattr(message, name) if message.HasField(name) else None


def _extra_key(key: pb.KvBlockExtraKey) -> Any:
    """As vLLM's msgpack carries it: text, bytes, an int, or [identifier, offset]."""
    kind = key.WhichOneof("key")
    if kind == "multimodal":
        return [key.multimodal.identifier, key.multimodal.offset]
    return None if kind is None else getattr(key, kind)
