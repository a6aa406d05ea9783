"""The KV-event index: what each engine reports holding, re-hashed into the picker's blocks.

Why it does not need the engine's hash function: every BlockStored carries the token ids of its
blocks and the hash of the block before them. The index hashes those tokens with its own chained
hash, starting from the picker hash it already gave the parent, and remembers engine hash ->
picker hash per worker to apply BlockRemoved. Engine hashes are never computed, only compared
with hashes from the same engine's own stream, so neither the engine's hash algorithm (sha256,
builtin hash, xxhash, 64-bit ints or bytes) nor its seed (vLLM's PYTHONHASHSEED-dependent
NONE_HASH) matters, and engines of different kinds or versions index into one namespace.

Per worker, what is held is a set of residencies, (KV cache group, medium, engine hash): the
engine hash names a token prefix whatever group or tier holds it (vLLM hashes blocks before
tagging them with a group), so hybrid groups and offloaded copies of one block share its picker
hash and reference-count it, and a removal in one group or tier leaves the others' copies
held. Three shapes of BlockStored, as vLLM 0.33 sends them:
- plain: one hash per block of `token_ids`, chained from the parent;
- masked (sliding-window groups, vllm/v1/core/block_pool.py cache_full_blocks): hashes only for
  the blocks the group keeps, token ids over the whole range, and which positions were kept is
  not sent, so kept blocks are placed by their hash when another group already knows it;
- placeholder (the offloading connector without self-describing events): `token_ids` empty,
  block_size 0, the hash of the chunk's last block: a copy of a block the engine already
  announced, placed by its hash likewise.
A block that cannot be placed is still tracked, so its removal is clean, but matches nothing.

LoRA: vLLM puts the adapter name first in each block's extra keys; that is what `lora_name`
says already, so it is dropped and the adapter's blocks chain from its own seed, matching
requests that name the adapter (as the OpenAI `model`). Other extra inputs (multimodal
content, cache_salt, SGLang's `cache_salt`) chain from a seed that includes them, so a
text-only request never claims a hit on them.

Matching is by token ids, so requests must be tokenized as the engine does (remote or hf
tokenizer; PrefixSettings refuses otherwise). Engines with different block sizes are matched
each in their own block size and reported in blocks of the finest one.

Writes come from the subscriber (one thread or task); reads from routing. Writes take a lock;
reads are dict lookups, atomic under the GIL.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from picker.prefix.blocks import next_hash
from picker.prefix.holders import Holders
from picker.prefix.index import PrefixMatch, PromptBlocks
from picker.prefix.kv_settings import KvEventSettings

__all__ = ["EngineView", "StoreResult", "SyncPrefixIndex"]

_MEDIUM_GPU = "GPU"  # vLLM's MEDIUM_GPU; a block offloaded elsewhere counts as held too

Residency = tuple[int, str, Hashable]  # (KV cache group, medium, engine hash)
PrefixKey = tuple[int, Hashable]  # (block size, engine hash): one token prefix
StoreResult = Literal["stored", "unplaced", "orphan", "invalid"]


def _seed(lora: str | None, extra: Any = None) -> int:
    return hash(("llm-picker/kv", lora, extra))


@dataclass(slots=True)
class EngineView:
    """One worker's cache as its events describe it."""

    block_size: int = 0  # of the lowest KV cache group: the one requests are matched in
    match_group: int | None = None
    group_sizes: dict[int, int] = field(default_factory=dict)
    # Residency -> prefix it holds (None: tracked, not placed), oldest first.
    resident: dict[Residency, PrefixKey | None] = field(default_factory=dict)
    prefixes: dict[PrefixKey, list[int]] = field(default_factory=dict)  # [picker hash, refs]
    held: dict[int, int] = field(default_factory=dict)  # picker hash -> references
    loras: set[str] = field(default_factory=set)


class SyncPrefixIndex:
    kind = "kv_events"

    def __init__(self, settings: KvEventSettings | None = None) -> None:
        self._settings = settings or KvEventSettings()
        self._views: dict[str, EngineView] = {}
        self._holders = Holders()
        self._pending: deque[tuple[float, str, EngineView, list[int]]] = deque()
        self._lock = threading.Lock()
        self.orphans = 0  # BlockStored whose parent the index never saw (a missed event)

    # -- what the engines report (the subscriber calls these) --------------------------------

    def stored(self, worker_id: str, engine_hashes: Sequence[Hashable],
               parent: Hashable | None, token_ids: Sequence[int], block_size: int, *,
               lora: str | None = None, medium: str | None = None,
               extra_keys: Sequence[Any] | None = None, group: int | None = None,
               salt: str | None = None) -> StoreResult:
        """Apply a BlockStored. "unplaced": some blocks are tracked without a picker hash
        (masked or placeholder blocks no other group announced); "orphan": the parent was
        never seen; "invalid": token ids do not cover the hashes in whole blocks."""
        group = group or 0
        medium = medium or _MEDIUM_GPU
        if token_ids and (block_size < 1 or len(token_ids) % block_size
                          or len(token_ids) < len(engine_hashes) * block_size):
            return "invalid"
        with self._lock:
            view = self._view(worker_id)
            if not token_ids or len(token_ids) > len(engine_hashes) * block_size:
                # Placeholder or masked: positions unknown, placed by hash alone.
                size = block_size or view.group_sizes.get(group) or view.block_size
                placed = [view.prefixes.get((size, h)) for h in engine_hashes]
                self._set_size(view, group, size)
                result: StoreResult = "stored"
                for engine_hash, prefix in zip(engine_hashes, placed, strict=True):
                    key = (size, engine_hash) if prefix is not None else None
                    result = "unplaced" if key is None else result
                    self._add(view, worker_id, (group, medium, engine_hash), key, 0)
                return result
            if parent is None:
                current = _seed(lora, salt)
            else:
                known = self._picker_hash(view, block_size, parent)
                if known is None:
                    self.orphans += 1
                    return "orphan"
                current = known
            self._set_size(view, group, block_size)
            if lora is not None:
                view.loras.add(lora)
            for i, engine_hash in enumerate(engine_hashes):
                extra = _own_extra(extra_keys[i] if extra_keys and i < len(extra_keys)
                                   else None, lora)
                seed = current if extra is None else hash((current, _seed(lora, extra)))
                current = next_hash(seed, token_ids[i * block_size:(i + 1) * block_size])
                self._add(view, worker_id, (group, medium, engine_hash),
                          (block_size, engine_hash), current)
        return "stored"

    def removed(self, worker_id: str, engine_hashes: Iterable[Hashable],
                medium: str | None = None, group: int | None = None) -> None:
        with self._lock:
            view = self._views.get(worker_id)
            if view is None:
                return
            bit = self._holders.bit(worker_id)
            for engine_hash in engine_hashes:
                residency = (group or 0, medium or _MEDIUM_GPU, engine_hash)
                if residency in view.resident:
                    self._drop(view, view.resident.pop(residency), bit)

    def expect(self, worker_id: str, block_size: int) -> None:
        """The worker's block size before its first event (configured or scraped), so picks
        made before then can already be recorded as pending."""
        with self._lock:
            view = self._view(worker_id)
            view.block_size = view.block_size or block_size

    def cleared(self, worker_id: str) -> None:
        """AllBlocksCleared, or the engine restarted: nothing of it is cached any more."""
        with self._lock:
            view = self._views.get(worker_id)
            if view is not None:
                self._holders.drop_worker(worker_id, view.held)
                self._views[worker_id] = EngineView(block_size=view.block_size)

    # -- PrefixIndex ---------------------------------------------------------------------------

    def match(self, prompt: PromptBlocks, worker_ids: Iterable[str]) -> PrefixMatch:
        if not prompt.is_tokens:
            return PrefixMatch(0, {})
        self._expire(time.monotonic())
        groups: dict[tuple[int, str | None], list[str]] = {}
        for worker_id in worker_ids:
            view = self._views.get(worker_id)
            if view is not None and view.block_size:
                lora = prompt.model if prompt.model in view.loras else None
                groups.setdefault((view.block_size, lora), []).append(worker_id)
        if not groups:
            return PrefixMatch(0, {})
        finest = min(block_size for block_size, _ in groups)
        matched: dict[str, int] = {}
        for (block_size, lora), ids in groups.items():
            hashes = prompt.hashes(block_size, _seed(lora))
            for worker_id, blocks in self._holders.leading(
                    hashes, self._holders.mask_of(ids)).items():
                matched[worker_id] = blocks * block_size // finest
        return PrefixMatch(len(prompt.units) // finest, matched)

    def record(self, prompt: PromptBlocks, worker_id: str) -> None:
        """Count the picked worker as holding the prompt for `pending_secs`: its own events
        arrive only after prefill starts."""
        ttl = self._settings.pending_secs
        view = self._views.get(worker_id)
        if not ttl or not prompt.is_tokens or view is None or not view.block_size:
            return
        lora = prompt.model if prompt.model in view.loras else None
        hashes = prompt.hashes(view.block_size, _seed(lora))
        with self._lock:
            if self._views.get(worker_id) is not view:
                return  # cleared or removed meanwhile
            bit = self._holders.bit(worker_id)
            for picker_hash in hashes:
                self._hold(view, picker_hash, bit)
            self._pending.append((time.monotonic() + ttl, worker_id, view, hashes))

    def remove_worker(self, worker_id: str) -> None:
        with self._lock:
            view = self._views.pop(worker_id, None)
            if view is not None:
                self._holders.drop_worker(worker_id, view.held)

    def set_capacity(self, worker_id: str, blocks: int) -> None:
        """Nothing to size: the engine reports its evictions."""

    def blocks_of(self, worker_id: str) -> int:
        view = self._views.get(worker_id)
        return 0 if view is None else len(view.resident)

    # -- internals ---------------------------------------------------------------------------

    def _view(self, worker_id: str) -> EngineView:
        view = self._views.get(worker_id)
        if view is None:
            view = self._views[worker_id] = EngineView()
        return view

    @staticmethod
    def _set_size(view: EngineView, group: int, block_size: int) -> None:
        if not block_size:
            return
        view.group_sizes[group] = block_size
        if (view.match_group is None or group <= view.match_group):
            view.match_group, view.block_size = group, block_size

    @staticmethod
    def _picker_hash(view: EngineView, block_size: int, engine_hash: Hashable) -> int | None:
        """The parent's picker hash, whichever group or tier announced it: a sliding-window
        group's parent may be a block it never kept."""
        known = view.prefixes.get((block_size, engine_hash))
        return None if known is None else known[0]

    def _add(self, view: EngineView, worker_id: str, residency: Residency,
             prefix: PrefixKey | None, picker_hash: int) -> None:
        """Track a residency (a repeat is ignored: a store announced twice holds once)."""
        if residency in view.resident:
            return
        view.resident[residency] = prefix
        bit = self._holders.bit(worker_id)
        if prefix is not None:
            entry = view.prefixes.get(prefix)
            if entry is None:
                entry = view.prefixes[prefix] = [picker_hash, 0]
            entry[1] += 1
            self._hold(view, entry[0], bit)
        while len(view.resident) > self._settings.max_blocks_per_worker:
            oldest = next(iter(view.resident))
            self._drop(view, view.resident.pop(oldest), bit)

    def _drop(self, view: EngineView, prefix: PrefixKey | None, bit: int) -> None:
        if prefix is None:
            return
        entry = view.prefixes[prefix]
        entry[1] -= 1
        if not entry[1]:
            del view.prefixes[prefix]
        self._release(view, entry[0], bit)

    def _hold(self, view: EngineView, picker_hash: int, bit: int) -> None:
        count = view.held.get(picker_hash, 0)
        view.held[picker_hash] = count + 1
        if not count:
            self._holders.add(picker_hash, bit)

    def _release(self, view: EngineView, picker_hash: int, bit: int) -> None:
        count = view.held.get(picker_hash, 0) - 1
        if count > 0:
            view.held[picker_hash] = count
        else:
            view.held.pop(picker_hash, None)
            self._holders.discard(picker_hash, bit)

    def _expire(self, now: float) -> None:
        pending = self._pending
        if not pending or pending[0][0] > now:
            return
        with self._lock:
            while pending and pending[0][0] <= now:
                _, worker_id, view, hashes = pending.popleft()
                if self._views.get(worker_id) is not view:
                    continue  # cleared since: its references went with it
                bit = self._holders.bit(worker_id)
                for picker_hash in hashes:
                    self._release(view, picker_hash, bit)


def _own_extra(extra: Any, lora: str | None) -> str | None:
    """A block's extra hash inputs beyond its LoRA adapter (vLLM lists the name first), as a
    hashable string; None when there are none."""
    if not extra:
        return None
    keys = list(extra) if isinstance(extra, (list, tuple)) else [extra]
    if lora is not None and keys and keys[0] == lora:
        keys = keys[1:]
    return repr(keys) if keys else None
