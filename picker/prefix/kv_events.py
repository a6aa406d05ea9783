"""KV-event subscriber: keeps the sync index equal to what each engine reports caching.

A gRPC worker whose `kv_events` names no endpoint follows its engine's SubscribeKvEvents
stream instead (picker.prefix.kv_grpc), through the same EventApplier and metrics.

Per worker with a `kv_events` endpoint, a ZMQ SUB socket receives the engine's multipart messages
`[topic, seq (8-byte big-endian), payload]` (vllm/distributed/kv_events.py, ZmqEventPublisher;
SGLang's is the same). Sequence numbers are consecutive per publisher, starting at 0:
- connecting to the engine, or a message that skips numbers, triggers a replay from the
  engine's ROUTER socket: send `[b"", start_seq]`, read until seq is -1. vLLM 0.33 and SGLang
  answer `[b"", topic, seq, payload]` and end with topic b"", older vLLM `[b"", seq, payload]`;
  both are read.
- a replay overlaps the live stream (the engine answers between live sends, and the SUB queue
  holds what arrived meanwhile): a live message at a sequence already applied, with the same
  payload, is an overlap and dropped (counted apart from problems: it is normal). The payload
  carries the batch's timestamp, so the same sequence number with another payload is a new
  publisher, i.e. the engine restarted: its state is cleared, then replayed from 0, at most
  once per `restart_min_interval_secs`. A
  dropped connection clears it too (a restarted engine holds nothing), and libzmq reconnects
  with exponential backoff.
Undecodable payloads are counted and logged once per worker per minute; nothing a publisher
sends stops the subscriber.

A data-parallel rank r of an engine publishes on the endpoint's port + r (vLLM's
offset_endpoint_port), so the worker `{base}@{r}` subscribes there, and its batches carry
`data_parallel_rank` r: each rank is its own worker in the index.
"""

from __future__ import annotations

import logging
import time

import zmq
import zmq.asyncio
import zmq.utils.monitor

from picker.fleet.grpc_calls import EngineCalls
from picker.fleet.registry import Worker, WorkerRegistry
from picker.fleet.worker_loops import WorkerTasks
from picker.fleet.worker_spec import KvEventsEndpoint
from picker.prefix.kv_apply import EventApplier, KvEventMetrics
from picker.prefix.kv_grpc import GrpcKvSubscription
from picker.prefix.kv_index import SyncPrefixIndex
from picker.prefix.kv_settings import KvEventSettings

__all__ = ["KvEventHub", "endpoint_for_rank"]

log = logging.getLogger("llm_picker.kv_events")

_END_SEQ = -1
# Sequences whose payload is remembered for duplicate detection: more than a replay's overlap
# with the live stream at any rate the subscriber keeps up with.
_DEDUP_WINDOW = 1 << 15


def endpoint_for_rank(endpoint: str, rank: int | None) -> str:
    """vLLM's convention: rank r's tcp port is the base port + r (ipc gets a `_dp{r}` suffix)."""
    if not rank:
        return endpoint
    if endpoint.startswith("ipc://"):
        return f"{endpoint}_dp{rank}"
    host, _, port = endpoint.rpartition(":")
    return f"{host}:{int(port) + rank}"


class KvEventHub:
    """One subscription task per worker that publishes events, following the registry."""

    def __init__(self, workers: WorkerRegistry, index: SyncPrefixIndex,
                 settings: KvEventSettings, metrics: KvEventMetrics) -> None:
        self._index = index
        self._settings = settings
        self._metrics = metrics
        self._tasks = WorkerTasks(workers, self._follow)
        self._context: zmq.asyncio.Context | None = None
        self._calls = EngineCalls()  # channels to gRPC workers, opened on first use

    async def start(self) -> None:
        self._context = zmq.asyncio.Context()
        self._tasks.start()

    async def stop(self) -> None:
        await self._tasks.stop()
        await self._calls.close()
        if self._context is not None:
            self._context.destroy(linger=0)

    async def _follow(self, worker: Worker) -> None:
        spec = worker.spec.kv_events
        if spec is None or self._context is None:
            return
        block_size = worker.spec.kv_block_size
        if block_size:
            self._index.expect(worker.id, block_size)
        if spec.endpoint is None:  # a gRPC worker's own stream (WorkerSpec checks)
            await GrpcKvSubscription(worker, self._calls, self._index, self._settings,
                                     self._metrics).run()
            return
        subscription = _Subscription(worker, spec, self._context, self._index, self._settings,
                                     self._metrics)
        try:
            await subscription.run()
        finally:
            subscription.close()


class _Subscription:
    def __init__(self, worker: Worker, spec: KvEventsEndpoint, context: zmq.asyncio.Context,
                 index: SyncPrefixIndex, settings: KvEventSettings,
                 metrics: KvEventMetrics) -> None:
        assert spec.endpoint is not None, "a ZMQ subscription needs the endpoint"
        self._worker = worker
        self._rank = worker.spec.dp_rank
        self._spec = spec
        self._context = context
        self._index = index
        self._settings = settings
        self._applier = EventApplier(worker, index, metrics)
        self._count_problem = self._applier.count_problem
        self._overlaps = metrics.overlaps.labels(worker.id)
        self._next: int | None = None  # next sequence number expected; None: unknown
        self._recent: list[tuple[int, int] | None] = [None] * _DEDUP_WINDOW  # (seq, hash)
        self._last_restart = -settings.restart_min_interval_secs
        self._sub = context.socket(zmq.SUB)
        self._sub.setsockopt(zmq.RECONNECT_IVL, 100)
        self._sub.setsockopt(zmq.RECONNECT_IVL_MAX, int(settings.reconnect_max_secs * 1000))
        self._sub.setsockopt(zmq.SUBSCRIBE, spec.topic.encode())
        self._monitor = self._sub.get_monitor_socket(zmq.EVENT_CONNECTED
                                                     | zmq.EVENT_DISCONNECTED)
        self._sub.connect(endpoint_for_rank(spec.endpoint, self._rank))
        self._replay: zmq.asyncio.Socket | None = None

    async def run(self) -> None:
        poller = zmq.asyncio.Poller()
        poller.register(self._sub, zmq.POLLIN)
        poller.register(self._monitor, zmq.POLLIN)
        while True:
            ready = dict(await poller.poll())
            if self._monitor in ready:
                event = zmq.utils.monitor.parse_monitor_message(
                    await self._monitor.recv_multipart())
                if event["event"] == zmq.EVENT_DISCONNECTED:
                    self._restarted("disconnected")
                elif self._next is None:
                    await self._catch_up(0)  # connected: what it published before we joined
            if self._sub in ready:
                frames = await self._sub.recv_multipart()
                if len(frames) != 3 or len(frames[1]) != 8:
                    self._applier.undecodable(
                        f"{len(frames)} frames, expected [topic, seq, payload]")
                    continue
                await self._on_live(int.from_bytes(frames[1], "big"), frames[2])

    def close(self) -> None:
        self._sub.disable_monitor()
        for socket in (self._monitor, self._sub, self._replay):
            if socket is not None:
                socket.close(linger=0)

    async def _on_live(self, seq: int, payload: bytes) -> None:
        if self._next is not None and seq < self._next:
            if self._seen(seq, payload):
                self._overlaps.inc()
                return
            now = time.monotonic()
            if now - self._last_restart < self._settings.restart_min_interval_secs:
                self._count_problem("restart_deferred")
                return
            self._last_restart = now
            self._restarted("sequence started over")
        if self._next is None or seq > self._next:
            if self._next is not None:
                self._count_problem("gap")
            await self._catch_up(self._next or 0)
        if self._next is None or seq >= self._next:
            self._deliver(seq, payload)
        else:
            self._overlaps.inc()  # the catch-up just replayed it

    def _deliver(self, seq: int, payload: bytes) -> None:
        self._applier.apply(payload)
        self._recent[seq % _DEDUP_WINDOW] = (seq, hash(payload))
        self._next = seq + 1

    def _seen(self, seq: int, payload: bytes) -> bool:
        """Whether this exact message was applied already (delivered by replay and live)."""
        return self._recent[seq % _DEDUP_WINDOW] == (seq, hash(payload))

    def _restarted(self, why: str) -> None:
        """A new engine process: what the old one cached is gone."""
        if self._next is None:
            return
        log.info("kv events of %s: %s; state cleared", self._worker.id, why)
        self._count_problem("engine_restart")
        self._index.cleared(self._worker.id)
        self._next = None
        self._recent = [None] * _DEDUP_WINDOW

    async def _catch_up(self, start: int) -> None:
        """Apply the batches the engine still buffers from `start` on."""
        if self._spec.replay_endpoint is None:
            return
        if self._replay is None:
            self._replay = self._context.socket(zmq.DEALER)
            self._replay.connect(endpoint_for_rank(self._spec.replay_endpoint, self._rank))
        await self._replay.send_multipart((b"", start.to_bytes(8, "big")))
        deadline = time.monotonic() + self._settings.replay_timeout_secs
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not await self._replay.poll(remaining * 1000):
                # A late answer would be read as the reply to the next request: start afresh.
                self._count_problem("replay_failed")
                self._replay.close(linger=0)
                self._replay = None
                return
            frames = await self._replay.recv_multipart()
            # [b"", topic, seq, payload] (vLLM 0.33, SGLang) or [b"", seq, payload] (older).
            if len(frames) not in (3, 4) or frames[0] or len(frames[-2]) != 8:
                self._applier.undecodable(f"replay message of {len(frames)} frames")
                continue
            seq = int.from_bytes(frames[-2], "big", signed=True)
            if seq == _END_SEQ:
                return
            if self._next is None or seq >= self._next:
                self._deliver(seq, frames[-1])
