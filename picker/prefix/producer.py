"""PrefixProducer: computes each request's prefix match before policies run, records after.

The one place that knows how a request becomes prompt blocks (tokenizer, block size) and which
index holds them; policies only read `request.prefix`.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from picker.fleet.registry import Worker
from picker.prefix.approx import ApproxPrefixIndex
from picker.prefix.calibration import Calibration
from picker.prefix.index import PrefixIndex, PrefixMatch, PromptBlocks
from picker.prefix.kv_settings import KvEventSettings
from picker.prefix.tokenizers import RemoteTokenizer, TokenizerSettings, load_hf_tokenizer
from picker.routing.request import RoutingRequest
from picker.strict import StrictModel

if TYPE_CHECKING:
    from picker.prefix.kv_index import SyncPrefixIndex
    from picker.replicas.wire import Pick

__all__ = ["PrefixProducer", "PrefixSettings"]


class PrefixSettings(StrictModel):

    enabled: bool = False
    # approximate: learned from the picker's own decisions. kv_events: what the engines report
    # holding (workers with `kv_events` endpoints), see picker/prefix/kv_index.py.
    index: Literal["approximate", "kv_events"] = "approximate"
    # Units per block of the approximate index: characters with the character tokenizer
    # (128 is AIBrix's recommendation), else tokens. The kv_events index uses each engine's.
    block_size: int = Field(default=128, ge=1)
    # ~160 bytes per block (measured): 32768 blocks is ~5 MB per worker.
    capacity_blocks: int = Field(default=32768, ge=1, description="Per worker")
    tokenizer: TokenizerSettings = Field(default_factory=TokenizerSettings)
    # Size each worker's index like its engine's KV cache once `vllm:cache_config_info` has been
    # scraped (num_gpu_blocks x block_size tokens, at the measured characters per token for
    # characters), corrected by the engine's own prefix-cache hits (picker/prefix/calibration.py).
    autotune_capacity: bool = True
    # How much more than the engine holds the index remembers: forgetting first costs a
    # session's whole history, remembering longer at most one cold prefill.
    capacity_margin: float = Field(default=1.1, ge=1.0, le=4.0)
    kv_events: KvEventSettings = Field(default_factory=KvEventSettings)

    def engine_tokens_problem(self) -> str | None:
        """Why these settings cannot work, or None. AIBrix refuses the same combination:
        engines report token ids, so prompts must be cut into the same token ids."""
        if self.index == "kv_events" and self.tokenizer.kind == "character":
            return ("index kv_events matches prompts on the engines' token ids, so it needs a "
                    "tokenizer that produces them: remote (the engine's /tokenize) or hf (the "
                    "model's tokenizer.json); character cannot")
        return None


class PrefixProducer:
    """Built at start-up (an hf tokenizer file is read here, so a bad path fails early).

    `publish_to` names where every pick recorded into the approximate index goes (worker
    id, prompt units, predicted blocks, block hashes): peer replicas (picker/replicas), whose
    picks come back through `apply`."""

    def __init__(self, settings: PrefixSettings, index: PrefixIndex | None = None) -> None:
        kind = settings.tokenizer.kind
        path = settings.tokenizer.path
        self._hf = (load_hf_tokenizer(path, settings.tokenizer.chat_template)
                    if kind == "hf" and path else None)
        self.remote = RemoteTokenizer(settings.tokenizer) if kind == "remote" else None
        # The approximate index: the index itself, or under kv_events the one prompts go to when
        # the remote tokenizer failed and fell back to characters (they match no engine block).
        self._approx: ApproxPrefixIndex | None = None
        if settings.index == "approximate" or self.remote is not None:
            self._approx = ApproxPrefixIndex(settings.capacity_blocks, settings.block_size)
        if index is not None:
            self.index = index
        elif settings.index == "kv_events":
            # Imported here: with KV sync off, nothing of it is loaded (nor pyzmq).
            from picker.prefix.kv_index import SyncPrefixIndex
            self.index = SyncPrefixIndex(settings.kv_events)
        else:
            assert self._approx is not None
            self.index = self._approx
        self._units_per_block = settings.block_size
        self._publish: Callable[[str, int, int, list[int], int], None] | None = None
        # Picks made and not yet learned (`record`), and the lock that makes learning them
        # one step for a match on another thread.
        self._pending: list[tuple[PromptBlocks, Worker]] = []
        self._pending_lock = threading.Lock()
        # Under kv_events the approximate index only ever sees character (fallback) prompts.
        sees_tokens = self._hf is not None or (self.remote is not None
                                               and self._approx is self.index)
        self.calibration = (Calibration(settings.block_size, sees_tokens,
                                        settings.capacity_margin)
                            if settings.autotune_capacity and self._approx is not None else None)

    def sync_index(self) -> SyncPrefixIndex:
        """The KV-event index that subscribers feed (prefix.index kv_events only)."""
        from picker.prefix.kv_index import SyncPrefixIndex

        if not isinstance(self.index, SyncPrefixIndex):
            raise RuntimeError("prefix.index is not kv_events")
        return self.index

    def annotate(
        self, request: RoutingRequest, candidates: Sequence[Worker]
    ) -> tuple[RoutingRequest, PromptBlocks]:
        if self._pending:
            self.flush()
        prompt: PromptBlocks
        if request.tokens is not None:
            prompt = PromptBlocks(request.model, request.tokens, is_tokens=True)
        elif self._hf is not None:
            prompt = PromptBlocks(request.model, self._hf.units(request), is_tokens=True)
        else:
            prompt = PromptBlocks(request.model, request.prompt_text, is_tokens=False)
        index = self._index_for(prompt)
        match = index.match(prompt, (w.id for w in candidates))
        approx = self._approx
        # Built directly (dataclasses.replace introspects the fields on every call).
        match = PrefixMatch(
            total_blocks=match.total_blocks, matched=match.matched,
            held={w.id: index.blocks_of(w.id) for w in candidates},
            tokens_per_block=self._tokens_per_block(prompt, match.total_blocks),
            capacity={} if index is not approx or approx is None else
            {w.id: approx.capacity_of(w.id) for w in candidates})
        prompt.predicted = match
        return replace(request, prefix=match), prompt

    def record(self, prompt: PromptBlocks, worker: Worker) -> None:
        """The pick is learned after the answer: on an event loop, once the callback that
        decided yields (the one writing the answer to the proxy), with the prompt's blocks the
        match did not hash. Any match before that learns the pending picks first (`annotate`),
        so no decision misses an earlier one. Off a loop (synchronous callers), at once."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._record_now(prompt, worker)
            return
        with self._pending_lock:
            self._pending.append((prompt, worker))
            if len(self._pending) == 1:
                loop.call_soon(self.flush)

    def flush(self) -> None:
        """Learn the pending picks, in the order they were made."""
        with self._pending_lock:
            pending, self._pending = self._pending, []
            for prompt, worker in pending:
                self._record_now(prompt, worker)

    def _record_now(self, prompt: PromptBlocks, worker: Worker) -> None:
        index = self._index_for(prompt)
        approx = self._approx
        if index is not approx or approx is None:
            index.record(prompt, worker.id)
            return
        predicted = 0
        match = None
        if self.calibration is not None or self._publish is not None:
            # The decision's own prediction (matching again would walk a long prompt twice).
            match = prompt.predicted or approx.match(prompt, (worker.id,))
            predicted = match.blocks(worker.id)
        hashes = prompt.hashes(approx.block_size)
        self._learn(approx, worker, len(prompt.units), predicted, hashes)
        if self._publish is not None and match is not None:
            self._publish(worker.id, len(prompt.units), predicted, hashes,
                          round(match.uncached_tokens(worker.id)))

    def publish_to(self, publish: Callable[[str, int, int, list[int], int], None]) -> None:
        self._publish = publish

    def apply(self, pick: Pick, worker: Worker) -> None:
        """A peer replica's pick: learned as if this replica had made it, never published."""
        if self._approx is not None:
            self._learn(self._approx, worker, pick.units, pick.predicted, pick.hashes)

    def _learn(self, approx: ApproxPrefixIndex, worker: Worker, units: int,
               predicted_blocks: int, hashes: list[int]) -> None:
        if self.calibration is not None:
            # Peers' picks count too: the engine's counters hold every replica's traffic.
            capacity = self.calibration.recorded(worker, units,
                                                 predicted_blocks * self._units_per_block)
            if capacity is not None:
                approx.set_capacity(worker.id, capacity)
        approx.record_hashes(hashes, worker.id)

    def _tokens_per_block(self, prompt: PromptBlocks, blocks: int) -> float:
        """Prompt tokens per matched block, the partial tail spread over the blocks."""
        if not blocks:
            return 0.0
        per_token = 1.0
        if not prompt.is_tokens:
            measured = (self.calibration.units_per_token()
                        if self.calibration is not None else None)
            # Unmeasured: 4 characters per token, only to weigh prefill work across
            # candidates (index sizing never assumes it).
            per_token = measured or 4.0
        return len(prompt.units) / blocks / per_token

    def _index_for(self, prompt: PromptBlocks) -> PrefixIndex:
        if prompt.is_tokens or self._approx is None:
            return self.index
        return self._approx

    # RegistryListener: a removed worker's cache is gone with it.
    def worker_added(self, worker: Worker) -> None:
        pass

    def worker_removed(self, worker: Worker) -> None:
        self.flush()  # a pending pick must not bring the worker's blocks back
        self.index.remove_worker(worker.id)
        if self._approx is not None and self._approx is not self.index:
            self._approx.remove_worker(worker.id)
        if self.calibration is not None:
            self.calibration.forget(worker.id)
