"""The gRPC sim's KV events: its cache's batches on SubscribeKvEvents, as an engine's servicer
streams them.

An SGLang or vLLM engine in gRPC mode publishes msgpack batches over ZMQ, and its servicer
relays them as KvEventBatch messages (smg_grpc_servicer 0.14.1 kv_relay.py). The sim does the
same without the socket: each batch is encoded in vLLM 0.33's format (picker_sim.kv_formats,
the bytes the ZMQ publisher sends) and converted by the servicer's own decode_batch and
Normalizer, so subscribers get exactly what that servicer would send, numbered from 0 as the
publisher numbers them. The last `history` batches are kept: a subscription with a
non-zero start_sequence_number is served from them (as the Rust relay keeps history,
kv_relay.py:20-24), or refused with OUT_OF_RANGE when they no longer reach back that far.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc
from smg_grpc_proto.generated import common_pb2
from smg_grpc_servicer.kv_relay import Normalizer, decode_batch

from picker_sim.kv_formats import WIRE, KvEvent, WireFormat

__all__ = ["KvEventStream"]


class KvEventStream:
    """CacheEvents' publisher for the gRPC sim, and the SubscribeKvEvents method."""

    wire: WireFormat = WIRE["map"]

    def __init__(self, history: int = 10_000) -> None:
        self._next = 0
        self._history: deque[Any] = deque(maxlen=history)
        self._normalizer = Normalizer()
        self._subscribers: set[asyncio.Queue[Any]] = set()
        self.dropped_next = 0  # test knob: leave this many batches out of live streams

    @property
    def subscribers(self) -> int:
        """Streams open now (a test waits for its subscriber before publishing)."""
        return len(self._subscribers)

    def publish(self, events: Sequence[KvEvent]) -> None:
        if not events:
            return
        payload = self.wire.batch(list(events), time.time(), 0)
        batch = self._normalizer.normalize_batch(decode_batch(payload), self._next, 0)
        self._next += 1
        self._history.append(batch)
        if self.dropped_next:
            self.dropped_next -= 1
            return
        for queue in self._subscribers:
            queue.put_nowait(batch)

    async def SubscribeKvEvents(self, request: Any, context: grpc.aio.ServicerContext,
                                ) -> AsyncIterator[Any]:
        start = request.start_sequence_number
        oldest = self._history[0].sequence_number if self._history else self._next
        if start and not oldest <= start <= self._next:
            await context.abort(grpc.StatusCode.OUT_OF_RANGE,
                                f"start_sequence_number {start}: history holds "
                                f"{oldest}-{self._next - 1}")
        # History and registration in one step: no batch is missed or sent twice.
        replay = [batch for batch in self._history if start and batch.sequence_number >= start]
        queue: asyncio.Queue[Any] = asyncio.Queue()
        self._subscribers.add(queue)
        try:
            for batch in replay:
                yield batch
            while True:
                yield await queue.get()
        finally:
            self._subscribers.discard(queue)


def handler(stream: KvEventStream) -> grpc.RpcMethodHandler:
    return grpc.unary_stream_rpc_method_handler(
        stream.SubscribeKvEvents,
        request_deserializer=common_pb2.SubscribeKvEventsRequest.FromString,
        response_serializer=common_pb2.KvEventBatch.SerializeToString)
