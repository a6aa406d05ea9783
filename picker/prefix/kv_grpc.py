"""KV events of a gRPC worker: its engine's SubscribeKvEvents stream into the KV-event index.

The gRPC twin of picker.prefix.kv_events' ZMQ subscription, applying each batch with the same
EventApplier (decoded by picker.prefix.kv_grpc_wire) and counting into the same metrics. What
the stream promises (smg_grpc_servicer 0.14.1 kv_relay.py:9-24, common.proto:19-45):
- one stream carries every data-parallel rank's batches, each numbered by its own rank's
  publisher, the rank on the batch: the sequence is followed per rank, and a worker that is one
  rank takes only its rank's batches;
- `start_sequence_number` 0 is live from now on; a servicer that keeps history replays from a
  non-zero one, one that keeps none refuses it with OUT_OF_RANGE (kv_relay.py:1072-1076);
- the servicer ends the stream with DATA_LOSS when it lost events itself (a gap it could not
  replay, a publisher that started over): the worker is cleared and subscribed afresh, as the
  gateway does (kv_relay.py:17-19);
- `load_only` batches carry a load record and no events, repeating the last sequence
  (common.proto:50-55): skipped.
So: a sequence skip, or a stream that ends, resubscribes from the next sequence expected when
one rank is followed (a replay); a refused replay, DATA_LOSS, or a stream of several ranks
clears the worker (a restarted engine holds nothing) and subscribes from 0. Reconnects back off
from 100 ms to `reconnect_max_secs`.
"""

from __future__ import annotations

import asyncio
import logging

from picker.fleet.grpc_calls import EngineCallFailed, EngineCalls
from picker.fleet.registry import Worker
from picker.prefix.kv_apply import EventApplier, KvEventMetrics
from picker.prefix.kv_grpc_wire import decode_grpc_batch
from picker.prefix.kv_index import SyncPrefixIndex
from picker.prefix.kv_settings import KvEventSettings

__all__ = ["GrpcKvSubscription"]

log = logging.getLogger("llm_picker.kv_events")

_FIRST_DELAY_SECS = 0.1
# Statuses after which the worker's state cannot be trusted, and the problem each counts as.
_LOST = {"OUT_OF_RANGE": "replay_failed", "DATA_LOSS": "gap"}


class _Resubscribe(Exception):
    """The stream skipped a sequence: subscribe again from the next one expected."""


class GrpcKvSubscription:
    def __init__(self, worker: Worker, calls: EngineCalls, index: SyncPrefixIndex,
                 settings: KvEventSettings, metrics: KvEventMetrics) -> None:
        self._worker = worker
        self._rank = worker.spec.dp_rank
        self._calls = calls
        self._index = index
        self._settings = settings
        self._applier = EventApplier(worker, index, metrics)
        self._overlaps = metrics.overlaps.labels(worker.id)
        self._last: dict[int | None, int] = {}  # rank -> last sequence applied

    async def run(self) -> None:
        delay = _FIRST_DELAY_SECS
        while True:
            start = self._resume_from()
            try:
                if await self._follow(start):
                    delay = _FIRST_DELAY_SECS
            except _Resubscribe:
                if self._resume_from() == 0:
                    self._clear("a sequence skipped on a stream of several ranks")
                continue
            except EngineCallFailed as exc:
                if exc.status in _LOST:
                    self._applier.count_problem(_LOST[exc.status])
                    self._clear(str(exc))
                    continue
                log.debug("kv events of %s: %s", self._worker.id, exc)
            if self._resume_from() == 0:
                self._clear("stream ended")  # nothing to resume from: start afresh
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._settings.reconnect_max_secs)

    def _resume_from(self) -> int:
        """The next sequence of the one rank followed; 0 (live) with none or several."""
        if len(self._last) != 1:
            return 0
        return next(iter(self._last.values())) + 1

    async def _follow(self, start: int) -> bool:
        """Apply the stream's batches until it ends; whether any arrived."""
        received = received_batch = False
        async for message in self._calls.kv_events(self._worker.spec, start):
            received = True
            if message.load.load_only:
                continue
            batch = decode_grpc_batch(message)
            rank = batch.data_parallel_rank
            if self._rank is not None and rank not in (None, self._rank):
                continue  # another rank of the same engine: its own worker takes it
            seq, last = message.sequence_number, self._last.get(rank)
            if last is not None and seq <= last:
                self._overlaps.inc()  # a replay's overlap with what was applied
                continue
            if last is not None and seq > last + 1:
                if not received_batch and start:  # the replay asked for did not come
                    raise EngineCallFailed(f"replay from {start} began at {seq}",
                                           "OUT_OF_RANGE")
                self._applier.count_problem("gap")
                raise _Resubscribe
            received_batch = True
            self._applier.apply_batch(batch)
            self._last[rank] = seq
        return received

    def _clear(self, why: str) -> None:
        if not self._last:
            return
        log.info("kv events of %s: %s; state cleared", self._worker.id, why)
        self._applier.count_problem("engine_restart")
        self._index.cleared(self._worker.id)
        self._last.clear()
