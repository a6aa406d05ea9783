"""KV-cache events on the wire: decoding what vLLM and SGLang publish.

Facts from the engines' sources (vllm/distributed/kv_events.py in vLLM 0.33.0, and
python/sglang/srt/disaggregation/kv_events.py in SGLang 0.5.23):
- the batch is always a positional array `[ts, events, rank]` (msgspec `array_like`); vLLM
  omits a None rank (`omit_defaults`), SGLang sends it as nil;
- vLLM 0.33 and SGLang encode each event as a tagged map: `{"type": "BlockStored", ...}`, with
  every required field present (nil when None) and optional fields left out when at their
  default;
- older vLLM releases encoded events positionally too: `["BlockStored", hashes, parent, ...]`,
  fields in declaration order, tag first; so does SGLang's main after 0.5.23, where a salted
  request's BlockStored (BlockStoredWithMetadata, same tag) carries one more item, a map
  `{"cache_salt": ...}`, at the position where vLLM's positional form has `lora_name`.
Block hashes are 64-bit ints or bytes. Both engines append fields over time: unknown map keys
and extra trailing array items are ignored, missing optional ones default.

The structs below are the union of what the engines declare, every field but the hashes
optional, so one decoder reads every version. Decoding is typed (msgspec builds the objects in
C); only a batch that fails typed decoding is taken apart event by event, so an event of an
unknown kind costs that event, not the batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

__all__ = [
    "AllBlocksCleared", "BlockRemoved", "BlockStored", "DecodedBatch", "KvEvent", "decode_batch",
]

EngineHash = int | bytes


class BlockStored(msgspec.Struct, tag="BlockStored", gc=False):
    # vLLM 0.33's field order (the positional form depends on it), then SGLang's extra field.
    block_hashes: list[EngineHash]
    parent_block_hash: EngineHash | None = None
    token_ids: list[int] = []
    block_size: int = 0  # 0 with token ids: not sent, the worker's configured size is used
    lora_id: int | None = None
    medium: str | None = None
    lora_name: str | None = None
    # vLLM: per kept block, the untagged extra hash inputs (LoRA name first, multimodal
    # (identifier, offset) pairs, cache_salt, prompt-embedding digests); None for plain text.
    extra_keys: list[Any] | None = None
    group_idx: int | None = None  # vLLM's KV cache group (hybrid models)
    kv_cache_spec_kind: str | None = None
    kv_cache_spec_sliding_window: int | None = None
    locality: str | None = None
    ownership: str | None = None
    session_id: str | None = None
    lookahead_token_ids: list[list[int]] | None = None
    cache_salt: str | None = None  # SGLang: the request's salt (its hashes are scoped by it)


class BlockRemoved(msgspec.Struct, tag="BlockRemoved", gc=False):
    block_hashes: list[EngineHash]
    medium: str | None = None
    group_idx: int | None = None
    locality: str | None = None
    ownership: str | None = None


class AllBlocksCleared(msgspec.Struct, tag="AllBlocksCleared", gc=False):
    pass


KvEvent = BlockStored | BlockRemoved | AllBlocksCleared


class _StoredMetadata(msgspec.Struct, gc=False):
    """SGLang's BlockStoredMetadata: the trailing map of a salted request's BlockStored."""

    cache_salt: str | None = None


# Positional events (older vLLM, SGLang main). The removal and clear are subclasses, so
# callers test for the base classes; a positional BlockStored is turned into a BlockStored.
class _PositionalBlockStored(msgspec.Struct, array_like=True, tag="BlockStored", gc=False):
    block_hashes: list[EngineHash]
    parent_block_hash: EngineHash | None = None
    token_ids: list[int] = []
    block_size: int = 0
    lora_id: int | None = None
    medium: str | None = None
    lora_name: str | _StoredMetadata | None = None  # vLLM's adapter name; SGLang's metadata
    extra_keys: list[Any] | None = None
    group_idx: int | None = None
    kv_cache_spec_kind: str | None = None
    kv_cache_spec_sliding_window: int | None = None
    locality: str | None = None
    ownership: str | None = None
    session_id: str | None = None
    lookahead_token_ids: list[list[int]] | None = None
    cache_salt: str | None = None

    def public(self) -> BlockStored:
        fields = msgspec.structs.asdict(self)
        if isinstance(self.lora_name, _StoredMetadata):
            fields.update(lora_name=None, cache_salt=self.lora_name.cache_salt)
        return BlockStored(**fields)


class _PositionalBlockRemoved(BlockRemoved, array_like=True, tag="BlockRemoved"):
    pass


class _PositionalAllBlocksCleared(AllBlocksCleared, array_like=True, tag="AllBlocksCleared"):
    pass


_PositionalEvent = _PositionalBlockStored | _PositionalBlockRemoved | _PositionalAllBlocksCleared


class _TaggedBatch(msgspec.Struct, array_like=True, gc=False):
    ts: float
    events: Sequence[KvEvent]
    data_parallel_rank: int | None = None  # SGLang names it attn_dp_rank; same position


class _PositionalBatch(msgspec.Struct, array_like=True, gc=False):
    ts: float
    events: Sequence[_PositionalEvent]
    data_parallel_rank: int | None = None


# The current form first: a mismatch fails at the first event, so the order costs little.
_DECODERS = (msgspec.msgpack.Decoder(_TaggedBatch), msgspec.msgpack.Decoder(_PositionalBatch))


@dataclass(frozen=True, slots=True)
class DecodedBatch:
    events: Sequence[KvEvent]
    data_parallel_rank: int | None
    skipped: int  # events that could not be decoded (unknown kind, wrong field types)


def decode_batch(payload: bytes) -> DecodedBatch:
    """Raises ValueError (naming what was wrong) when the batch itself is not one."""
    for decoder in _DECODERS:
        try:
            batch = decoder.decode(payload)
        except msgspec.DecodeError:
            continue
        return DecodedBatch(_public(batch.events), batch.data_parallel_rank, 0)
    return _decode_event_by_event(payload)


def _public(events: Sequence[KvEvent | _PositionalEvent]) -> Sequence[KvEvent]:
    """The events as callers see them: positional BlockStored turned into BlockStored (the
    tagged-map form, the common one, is returned as decoded)."""
    if not any(isinstance(event, _PositionalBlockStored) for event in events):
        return events  # type: ignore[return-value]  # no positional BlockStored left
    return [event.public() if isinstance(event, _PositionalBlockStored) else event
            for event in events]


def _decode_event_by_event(payload: bytes) -> DecodedBatch:
    try:
        raw = msgspec.msgpack.decode(payload)
    except msgspec.DecodeError as exc:
        raise ValueError(f"not msgpack: {exc}") from exc
    if not isinstance(raw, list) or len(raw) < 2:
        raise ValueError(f"not an EventBatch: a {type(raw).__name__}, not [ts, events, rank]")
    events, rank = raw[1], (raw[2] if len(raw) > 2 else None)
    if not isinstance(events, list):
        raise ValueError(f"EventBatch.events is a {type(events).__name__}, not an array")
    if rank is not None and (not isinstance(rank, int) or isinstance(rank, bool)):
        raise ValueError(f"EventBatch.data_parallel_rank is {rank!r:.50}, not an integer")
    decoded: list[KvEvent | _PositionalEvent] = []
    for event in events:
        union: Any = KvEvent if isinstance(event, dict) else _PositionalEvent
        try:
            decoded.append(msgspec.convert(event, union))
        except msgspec.ValidationError:
            continue
    return DecodedBatch(_public(decoded), rank, len(events) - len(decoded))
