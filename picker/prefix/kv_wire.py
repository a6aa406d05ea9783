"""KV-cache events on the wire: vLLM's msgpack EventBatch, in both encodings engines ship.

Facts from vLLM (vllm/distributed/kv_events.py) and SGLang (which publishes the same classes):
a batch is `(ts, events, data_parallel_rank)`; events are msgspec tagged unions whose tag is the
class name. Older vLLM and SGLang encode structs as positional arrays (`array_like`, tag first);
current vLLM encodes maps with the tag under "type". Block hashes are 64-bit ints or bytes
(sha256-based hashing). Later versions append fields: extra trailing array items and unknown map
keys are ignored, missing optional ones default.

Decoding is typed (msgspec builds the objects in C); only a batch that fails typed decoding is
taken apart event by event, so one event of an unknown kind costs that event, not the batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import msgspec

__all__ = [
    "AllBlocksCleared", "BlockRemoved", "BlockStored", "DecodedBatch", "Encoding", "EventBatch",
    "KvEvent", "WIRE", "decode_batch",
]

EngineHash = int | bytes
Encoding = Literal["array", "map"]


class BlockStored(msgspec.Struct, tag="BlockStored", omit_defaults=True, gc=False):
    block_hashes: list[EngineHash]
    parent_block_hash: EngineHash | None = None
    token_ids: list[int] = []
    block_size: int = 0  # 0: not sent (the worker's kv_block_size or scraped geometry is used)
    lora_id: int | None = None
    medium: str | None = None
    lora_name: str | None = None
    # vLLM: per-block extra hash inputs (multimodal ids, cache_salt, LoRA); None when plain text.
    extra_keys: list[Any] | None = None


class BlockRemoved(msgspec.Struct, tag="BlockRemoved", omit_defaults=True, gc=False):
    block_hashes: list[EngineHash]
    medium: str | None = None


class AllBlocksCleared(msgspec.Struct, tag="AllBlocksCleared", omit_defaults=True, gc=False):
    pass


KvEvent = BlockStored | BlockRemoved | AllBlocksCleared


class EventBatch(msgspec.Struct, omit_defaults=True, gc=False):
    ts: float
    events: Sequence[KvEvent]
    data_parallel_rank: int | None = None


# The positional encoding: the same structs, fields in declaration order, tag first.
class _ArrayBlockStored(BlockStored, array_like=True, tag="BlockStored"):
    pass


class _ArrayBlockRemoved(BlockRemoved, array_like=True, tag="BlockRemoved"):
    pass


class _ArrayAllBlocksCleared(AllBlocksCleared, array_like=True, tag="AllBlocksCleared"):
    pass


_ArrayEvent = _ArrayBlockStored | _ArrayBlockRemoved | _ArrayAllBlocksCleared


class _ArrayEventBatch(EventBatch, array_like=True):
    events: Sequence[_ArrayEvent]


@dataclass(frozen=True, slots=True)
class WireFormat:
    """The classes of one encoding: what a publisher (the simulator) builds to emit it."""

    stored: type[BlockStored]
    removed: type[BlockRemoved]
    cleared: type[AllBlocksCleared]
    batch: type[EventBatch]
    event: Any  # the tagged union, for event-by-event decoding

    def encode(self, batch: EventBatch) -> bytes:
        return _ENCODER.encode(batch)


WIRE: dict[Encoding, WireFormat] = {
    "map": WireFormat(BlockStored, BlockRemoved, AllBlocksCleared, EventBatch, KvEvent),
    "array": WireFormat(_ArrayBlockStored, _ArrayBlockRemoved, _ArrayAllBlocksCleared,
                        _ArrayEventBatch, _ArrayEvent),
}
_ENCODER = msgspec.msgpack.Encoder()
_DECODERS = {name: msgspec.msgpack.Decoder(wire.batch) for name, wire in WIRE.items()}


@dataclass(frozen=True, slots=True)
class DecodedBatch:
    events: Sequence[KvEvent]
    data_parallel_rank: int | None
    skipped: int  # events that could not be decoded (unknown kind, wrong field types)


def decode_batch(payload: bytes) -> DecodedBatch:
    """Raises ValueError (naming what was wrong) when the batch itself is not one."""
    encoding: Encoding = "array" if payload[:1] and _is_array(payload[0]) else "map"
    try:
        batch = _DECODERS[encoding].decode(payload)
        return DecodedBatch(batch.events, batch.data_parallel_rank, 0)
    except msgspec.DecodeError:
        return _decode_event_by_event(payload, encoding)


def _is_array(first: int) -> bool:
    """msgpack type byte: fixarray 0x90-0x9f, array16 0xdc, array32 0xdd."""
    return 0x90 <= first <= 0x9F or first in (0xDC, 0xDD)


def _decode_event_by_event(payload: bytes, encoding: Encoding) -> DecodedBatch:
    try:
        raw = msgspec.msgpack.decode(payload)
    except msgspec.DecodeError as exc:
        raise ValueError(f"not msgpack: {exc}") from exc
    if isinstance(raw, list) and len(raw) >= 2:
        events, rank = raw[1], (raw[2] if len(raw) > 2 else None)
    elif isinstance(raw, dict) and "events" in raw:
        events, rank = raw["events"], raw.get("data_parallel_rank")
    else:
        raise ValueError(f"not an EventBatch: a {type(raw).__name__} without events")
    if not isinstance(events, list):
        raise ValueError(f"EventBatch.events is a {type(events).__name__}, not an array")
    if rank is not None and (not isinstance(rank, int) or isinstance(rank, bool)):
        raise ValueError(f"EventBatch.data_parallel_rank is {rank!r:.50}, not an integer")
    union = WIRE[encoding].event
    decoded: list[KvEvent] = []
    for event in events:
        try:
            decoded.append(msgspec.convert(event, union))
        except msgspec.ValidationError:
            continue
    return DecodedBatch(decoded, rank, len(events) - len(decoded))
