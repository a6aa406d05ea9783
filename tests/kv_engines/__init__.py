"""KV-event structs declared exactly as the engines declare them, for tests to encode with.

Same msgspec options, same fields, same order, same required/optional split as:
- vLLM 0.33.0, vllm/distributed/kv_events.py (EventBatch array_like + omit_defaults; events
  tag=True + omit_defaults, not array_like);
- vLLM 0.11.0 and 0.10.0, the same file (events array_like too; 0.10 has no `medium`);
- SGLang 0.5.23, python/sglang/srt/disaggregation/kv_events.py (EventBatch array_like without
  omit_defaults, third field attn_dp_rank; events tagged maps with SGLang's own fields);
- SGLang main after 0.5.23, the same file (events tagged arrays again; a salted BlockStored
  is BlockStoredWithMetadata, a trailing `{"cache_salt": ...}` map).
One module per engine version, so msgspec's tag (the class name) is the engine's. Kept apart
from the simulator's declarations (picker_sim/kv_formats.py) on purpose: the tests
pin the simulator against these.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from tests.kv_engines import sglang_0_5_23, sglang_main, vllm_0_10, vllm_0_11, vllm_0_33

EngineHash = bytes | int


_PACK = msgspec.msgpack.Encoder()


@dataclass(frozen=True)
class Engine:
    """Builds one engine version's events from the fields every version has."""

    name: str
    ns: Any
    has_medium: bool
    replay_has_topic: bool  # replayed messages: [b"", topic, seq, payload] vs [b"", seq, ...]
    stored_extra: Callable[[str | None], tuple[Any, ...]]  # required fields after lora_id

    def stored(self, hashes: list[EngineHash], parent: EngineHash | None,
               token_ids: list[int], block_size: int, medium: str | None = "GPU",
               **newer: Any) -> Any:
        return self.ns.BlockStored(hashes, parent, token_ids, block_size, None,
                                   *self.stored_extra(medium), **newer)

    def removed(self, hashes: list[EngineHash], medium: str | None = "GPU",
                **newer: Any) -> Any:
        if self.has_medium:
            return self.ns.BlockRemoved(hashes, medium, **newer)
        return self.ns.BlockRemoved(hashes)

    def cleared(self) -> Any:
        return self.ns.AllBlocksCleared()

    def batch(self, rank: int | None, events: list[Any], ts: float = 1.0) -> bytes:
        return _PACK.encode(self.ns.EventBatch(ts, events, rank))


VLLM_033 = Engine("vllm-0.33.0", vllm_0_33, True, True, lambda medium: (medium, None))
VLLM_011 = Engine("vllm-0.11.0", vllm_0_11, True, False, lambda medium: (medium,))
VLLM_010 = Engine("vllm-0.10.0", vllm_0_10, False, False, lambda medium: ())
SGLANG = Engine("sglang-0.5.23", sglang_0_5_23, True, True, lambda medium: (medium,))
SGLANG_MAIN = Engine("sglang-main", sglang_main, True, False, lambda medium: (medium,))
ENGINES = (VLLM_033, VLLM_011, VLLM_010, SGLANG, SGLANG_MAIN)
