"""The KV-event index: what each engine reports holding, re-hashed into the picker's blocks.

Why it does not need the engine's hash function: every BlockStored carries the token ids of its
blocks and the hash of the block before them. The index hashes those tokens with its own chained
hash, starting from the picker hash it already gave the parent, and remembers engine hash ->
picker hash per worker to apply BlockRemoved. Engine hashes are never computed, only compared
with hashes from the same engine's own stream, so neither the engine's hash algorithm (sha256,
builtin hash, xxhash, 64-bit ints or bytes) nor its seed (vLLM's PYTHONHASHSEED-dependent
NONE_HASH) matters, and engines of different kinds or versions index into one namespace.

Keyed by (model, LoRA): each worker's blocks live under its own bit, so only workers serving
the request's model are compared; a block stored for a LoRA adapter chains from that adapter's
seed and only matches requests that name the adapter. Blocks whose hash had extra inputs
(multimodal content, cache_salt) chain from a seed that includes them, so a text-only request
never claims a hit on them.

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
from typing import Any

from picker.prefix.blocks import next_hash
from picker.prefix.holders import Holders
from picker.prefix.index import PrefixMatch, PromptBlocks
from picker.prefix.kv_settings import KvEventSettings

__all__ = ["EngineView", "SyncPrefixIndex"]

_MEDIUM_GPU = "GPU"  # vLLM's MEDIUM_GPU; a block offloaded elsewhere counts as held too


def _seed(lora: str | None, extra: Any = None) -> int:
    return hash(("llm-picker/kv", lora, extra))


@dataclass(slots=True)
class EngineView:
    """One worker's cache as its events describe it."""

    block_size: int = 0
    # Engine block (hash, or (medium, hash) off the GPU) -> picker hash, oldest first.
    engine: dict[Hashable, int] = field(default_factory=dict)
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
               parent: Hashable | None, token_ids: Sequence[int], block_size: int,
               lora: str | None = None, medium: str | None = None,
               extra_keys: Sequence[Any] | None = None) -> bool:
        """Apply a BlockStored; False when it cannot be placed (unknown parent, token count
        not blocks x block_size)."""
        if block_size < 1 or len(token_ids) != len(engine_hashes) * block_size:
            return False
        with self._lock:
            view = self._view(worker_id)
            if parent is None:
                current = _seed(lora)
            else:
                known = view.engine.get(_key(parent, medium))
                if known is None:
                    self.orphans += 1
                    return False
                current = known
            view.block_size = block_size
            if lora is not None:
                view.loras.add(lora)
            bit = self._holders.bit(worker_id)
            for i, engine_hash in enumerate(engine_hashes):
                extra = extra_keys[i] if extra_keys is not None and i < len(extra_keys) else None
                seed = current if extra is None else hash((current, _seed(lora, repr(extra))))
                current = next_hash(seed, token_ids[i * block_size:(i + 1) * block_size])
                key = _key(engine_hash, medium)
                if key in view.engine:
                    continue  # stored twice (a replay overlapping live events)
                view.engine[key] = current
                self._hold(view, current, bit)
            while len(view.engine) > self._settings.max_blocks_per_worker:
                oldest = next(iter(view.engine))
                self._release(view, view.engine.pop(oldest), bit)
        return True

    def removed(self, worker_id: str, engine_hashes: Iterable[Hashable],
                medium: str | None = None) -> None:
        with self._lock:
            view = self._views.get(worker_id)
            if view is None:
                return
            bit = self._holders.bit(worker_id)
            for engine_hash in engine_hashes:
                picker_hash = view.engine.pop(_key(engine_hash, medium), None)
                if picker_hash is not None:
                    self._release(view, picker_hash, bit)

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
        return 0 if view is None else len(view.engine)

    # -- internals ---------------------------------------------------------------------------

    def _view(self, worker_id: str) -> EngineView:
        view = self._views.get(worker_id)
        if view is None:
            view = self._views[worker_id] = EngineView()
        return view

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


def _key(engine_hash: Hashable, medium: str | None) -> Hashable:
    return engine_hash if medium in (None, _MEDIUM_GPU) else (medium, engine_hash)
