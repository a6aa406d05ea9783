"""The event structs the simulator publishes, declared as the engines declare them.

A subscriber is only tested against the real format if the publisher encodes exactly what the
engine does, so these keep each engine's msgspec options, required/optional split and field
order (the picker's own decoder, picker/prefix/kv_wire.py, is deliberately more lenient):

- "map": vLLM 0.33.0 (vllm/distributed/kv_events.py): EventBatch `array_like, omit_defaults`;
  events `tag=True, omit_defaults` *without* array_like, i.e. maps with a "type" key. Fields
  without a default (parent hash, token ids, block size, lora_id, medium, lora_name) are always
  sent, nil when None; the later optional ones only when set.
- "array": vLLM 0.11.0, the last layout checked with positional events (KVCacheEvent also
  `array_like`): `["BlockStored", hashes, parent, token_ids, block_size, lora_id, medium]`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import msgspec

__all__ = ["WIRE", "Encoding", "KvEvent", "WireFormat"]

Encoding = Literal["map", "array"]
EngineHash = bytes | int  # vLLM's ExternalBlockHash


class EventBatch(msgspec.Struct, array_like=True, omit_defaults=True, gc=False):
    ts: float
    events: list[Any]
    data_parallel_rank: int | None = None


# -- vLLM 0.33.0 ---------------------------------------------------------------------------

class KVCacheEvent(msgspec.Struct, omit_defaults=True, gc=False, tag=True):
    pass


class BlockStored(KVCacheEvent):
    block_hashes: list[EngineHash]
    parent_block_hash: EngineHash | None
    token_ids: list[int]
    block_size: int
    lora_id: int | None
    medium: str | None
    lora_name: str | None
    extra_keys: list[tuple[Any, ...] | None] | None = None
    group_idx: int | None = None
    kv_cache_spec_kind: str | None = None
    kv_cache_spec_sliding_window: int | None = None
    locality: str | None = None
    ownership: str | None = None
    session_id: str | None = None
    lookahead_token_ids: list[list[int]] | None = None


class BlockRemoved(KVCacheEvent):
    block_hashes: list[EngineHash]
    medium: str | None
    group_idx: int | None = None
    locality: str | None = None
    ownership: str | None = None


class AllBlocksCleared(KVCacheEvent):
    pass


# -- vLLM 0.11.0 (positional) -------------------------------------------------------------

class PositionalKVCacheEvent(msgspec.Struct, array_like=True, omit_defaults=True, gc=False,
                             tag=True):
    pass


class PositionalBlockStored(PositionalKVCacheEvent, tag="BlockStored"):
    block_hashes: list[EngineHash]
    parent_block_hash: EngineHash | None
    token_ids: list[int]
    block_size: int
    lora_id: int | None
    medium: str | None


class PositionalBlockRemoved(PositionalKVCacheEvent, tag="BlockRemoved"):
    block_hashes: list[EngineHash]
    medium: str | None


class PositionalAllBlocksCleared(PositionalKVCacheEvent, tag="AllBlocksCleared"):
    pass


KvEvent = (BlockStored | BlockRemoved | AllBlocksCleared | PositionalBlockStored
           | PositionalBlockRemoved | PositionalAllBlocksCleared)


@dataclass(frozen=True, slots=True)
class WireFormat:
    """One engine version's event classes, and how its batches are framed for replay."""

    stored: Any  # the BlockStored class (constructors differ in the fields they take)
    removed: Any
    cleared: Any
    # vLLM 0.33 (and SGLang) repeat the topic in replayed messages: the DEALER reads
    # [b"", topic, seq, payload]; older vLLM sent [b"", seq, payload].
    replay_has_topic: bool

    def stored_event(self, hashes: list[EngineHash], parent: EngineHash | None,
                     token_ids: list[int], block_size: int, medium: str = "GPU",
                     **newer: Any) -> KvEvent:
        """A BlockStored as vLLM's block pool builds one for plain text: no LoRA; in 0.33 also
        group 0 and one None extra key per block. `newer` sets 0.33's optional fields."""
        if self.replay_has_topic:
            fields: dict[str, Any] = {"extra_keys": [None] * len(hashes), "group_idx": 0}
            fields.update(newer)
            return BlockStored(hashes, parent, token_ids, block_size, None, medium,
                               fields.pop("lora_name", None), **fields)
        return PositionalBlockStored(hashes, parent, token_ids, block_size, None, medium)

    def removed_event(self, hashes: list[EngineHash], medium: str = "GPU",
                      **newer: Any) -> KvEvent:
        if self.replay_has_topic:
            return BlockRemoved(hashes, medium, **({"group_idx": 0} | newer))
        return PositionalBlockRemoved(hashes, medium)

    def batch(self, events: list[KvEvent], ts: float, data_parallel_rank: int) -> bytes:
        return _ENCODER.encode(EventBatch(ts, events, data_parallel_rank))


_ENCODER = msgspec.msgpack.Encoder()

WIRE: dict[Encoding, WireFormat] = {
    "map": WireFormat(BlockStored, BlockRemoved, AllBlocksCleared, replay_has_topic=True),
    "array": WireFormat(PositionalBlockStored, PositionalBlockRemoved,
                        PositionalAllBlocksCleared, replay_has_topic=False),
}
