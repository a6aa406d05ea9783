"""KV events in, the sync index updated: what every subscription does with each batch.

The ZMQ subscriber (picker.prefix.kv_events) and the gRPC one (picker.prefix.kv_grpc) decode
their wires into the same batches and hand them here, with the same metrics.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter

from picker.fleet.registry import Worker
from picker.prefix.kv_index import SyncPrefixIndex
from picker.prefix.kv_wire import (
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    DecodedBatch,
    decode_batch,
)

__all__ = ["EventApplier", "KvEventMetrics"]

log = logging.getLogger("llm_picker.kv_events")

_LOG_EVERY_SECS = 60.0


class KvEventMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.events = Counter(
            "llm_picker_kv_events", "KV-cache events applied, by worker and kind "
            "(stored, unplaced: stored by hash only, matching nothing yet, removed, cleared)",
            ["worker", "event"], registry=registry)
        self.problems = Counter(
            "llm_picker_kv_event_problems", "KV-event stream trouble by worker and kind: "
            "undecodable (batch), skipped_event, orphan_block (parent never seen), invalid_block "
            "(tokens do not fit the hashes), gap, replay_failed, engine_restart, "
            "restart_deferred (rate-limited), foreign_rank", ["worker", "problem"],
            registry=registry)
        # Not trouble: after a connect or a gap the replay and the live stream overlap.
        self.overlaps = Counter(
            "llm_picker_kv_event_overlaps", "Live KV-event batches the replay had already "
            "delivered, dropped (normal after a connect or a gap), by worker", ["worker"],
            registry=registry)


class EventApplier:
    """Payload in, index updated: what a subscription does with each batch, on its own so the
    benchmark measures exactly this path."""

    def __init__(self, worker: Worker, index: SyncPrefixIndex, metrics: KvEventMetrics) -> None:
        self._worker = worker
        self._rank = worker.spec.dp_rank
        self._index = index
        self._count_event = _labelled(metrics.events, worker.id)
        self.count_problem = _labelled(metrics.problems, worker.id)
        self._last_log = -_LOG_EVERY_SECS

    def apply(self, payload: bytes) -> None:
        try:
            batch = decode_batch(payload)
        except ValueError as exc:
            self.undecodable(str(exc))
            return
        self.apply_batch(batch)

    def apply_batch(self, batch: DecodedBatch) -> None:
        """A batch decoded from either wire (msgpack over ZMQ, or KvEventBatch over gRPC)."""
        if batch.skipped:
            self.count_problem("skipped_event", batch.skipped)
            self._log(f"{batch.skipped} events of unknown kind or shape skipped")
        if self._rank is not None and batch.data_parallel_rank not in (None, self._rank):
            self.count_problem("foreign_rank")
            return
        self._apply_events(batch)

    def _apply_events(self, batch: DecodedBatch) -> None:
        index, worker_id = self._index, self._worker.id
        for event in batch.events:
            if isinstance(event, BlockStored):
                # Without token ids the size is the connector's 0 (a placeholder), kept as is.
                block_size = event.block_size or (self._engine_block_size()
                                                  if event.token_ids else 0)
                lora = event.lora_name or (None if event.lora_id is None
                                           else f"lora-id:{event.lora_id}")
                result = index.stored(
                    worker_id, event.block_hashes, event.parent_block_hash, event.token_ids,
                    block_size, lora=lora, medium=event.medium, extra_keys=event.extra_keys,
                    group=event.group_idx, salt=event.cache_salt)
                if result in ("stored", "unplaced"):
                    self._count_event(result)
                else:
                    self.count_problem(f"{result}_block")
            elif isinstance(event, BlockRemoved):
                index.removed(worker_id, event.block_hashes, event.medium, event.group_idx)
                self._count_event("removed")
            elif isinstance(event, AllBlocksCleared):
                index.cleared(worker_id)
                self._count_event("cleared")

    def _engine_block_size(self) -> int:
        """When events leave block_size out: configured, else scraped from the engine."""
        engine = self._worker.engine
        return self._worker.spec.kv_block_size or (engine.block_size if engine else None) or 0

    def undecodable(self, why: str) -> None:
        self.count_problem("undecodable")
        self._log(f"undecodable payload: {why}")

    def _log(self, message: str) -> None:
        now = time.monotonic()
        if now - self._last_log >= _LOG_EVERY_SECS:
            self._last_log = now
            log.warning("kv events of %s: %s (logged once a minute)", self._worker.id,
                        message[:200])



def _labelled(counter: Counter, worker_id: str) -> Callable[..., None]:
    def count(label: str, amount: int = 1) -> None:
        counter.labels(worker_id, label).inc(amount)
    return count
