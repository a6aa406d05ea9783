"""The simulator's KV-event publisher, with vLLM's ZmqEventPublisher semantics.

PUB socket: `[topic, seq (8-byte big-endian), payload]`, seq from 0 per process. ROUTER replay
socket: a request `[identity, b"", start_seq]` is answered with every buffered batch from
start_seq on, then an end marker of seq -1 and an empty payload. vLLM 0.33 sends
`[identity, b"", topic, seq, payload]` and ends with topic b""; older vLLM sent
`[identity, b"", seq, payload]` (the encoding picks which, see kv_formats). The buffer keeps
the last `buffer_batches` (vLLM's buffer_steps, default 10,000).

As in vLLM, one publisher thread owns both sockets: `publish` only queues, and the thread
alternates between answering a waiting replay request and sending the next queued batch (PUB
drops at its high-water mark). So, as with a real engine, a replay is answered after live sends
that the subscriber's SUB queue also holds: catch-up always overlaps the live stream when the
engine is busy.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import zmq

from picker_sim.cache import Claim
from picker_sim.engine import token_ids
from picker_sim.kv_formats import WIRE, Encoding, KvEvent, WireFormat

if TYPE_CHECKING:  # the gRPC sim's publisher needs the grpc-engines extra
    from picker_sim.kv_stream import KvEventStream

__all__ = ["CacheEvents", "KvEventPublisher"]

_END_SEQ = (-1).to_bytes(8, "big", signed=True)


class KvEventPublisher:
    def __init__(self, host: str, port: int, replay_port: int | None = None,
                 encoding: Encoding = "map", topic: str = "",
                 buffer_batches: int = 10_000, data_parallel_rank: int = 0) -> None:
        self.wire: WireFormat = WIRE[encoding]
        self.port = port
        self._rank = data_parallel_rank
        self._topic = topic.encode()
        self._seq = 0
        self._buffer: deque[tuple[int, bytes]] = deque(maxlen=buffer_batches)
        self._context = zmq.Context()
        self._pub = self._context.socket(zmq.PUB)
        self._pub.setsockopt(zmq.SNDHWM, 100_000)
        self._pub.bind(f"tcp://{host}:{port}")
        self._router: zmq.Socket | None = None  # type: ignore[type-arg]
        if replay_port is not None:
            self._router = self._context.socket(zmq.ROUTER)
            self._router.bind(f"tcp://{host}:{replay_port}")
        self._queue: queue.Queue[bytes | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, daemon=True, name="sim-kv-publisher")
        self._thread.start()
        self.dropped_next = 0  # test knob: leave this many batches out of the PUB stream

    def publish(self, events: Sequence[KvEvent]) -> None:
        if not events:
            return
        self.publish_payload(self.wire.batch(list(events), time.time(), self._rank))

    def publish_payload(self, payload: bytes) -> None:
        """Queue an encoded batch: tests use it to send other engines' bytes."""
        self._queue.put(payload)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=2.0)
        self._pub.close(linger=0)
        if self._router is not None:
            self._router.close(linger=0)
        self._context.term()

    def _run(self) -> None:
        while True:
            if self._router is not None and self._router.poll(0):
                self._serve_replay(self._router)
            try:
                payload = self._queue.get(timeout=0.1)
            except queue.Empty:
                continue
            if payload is None:
                return
            self._send(payload)

    def _send(self, payload: bytes) -> None:
        seq = self._seq
        self._seq += 1
        self._buffer.append((seq, payload))
        if self.dropped_next:
            self.dropped_next -= 1
            return
        with contextlib.suppress(zmq.Again):
            self._pub.send_multipart((self._topic, seq.to_bytes(8, "big"), payload),
                                     flags=zmq.NOBLOCK)

    def _serve_replay(self, router: zmq.Socket) -> None:  # type: ignore[type-arg]
        frames = router.recv_multipart()
        if len(frames) != 3 or len(frames[2]) != 8:
            return  # not a replay request
        identity, start = frames[0], int.from_bytes(frames[2], "big")
        topic = (self._topic,) if self.wire.replay_has_topic else ()
        for seq, payload in self._buffer:
            if seq >= start:
                router.send_multipart((identity, b"", *topic, seq.to_bytes(8, "big"), payload))
        end = (b"",) if self.wire.replay_has_topic else ()
        router.send_multipart((identity, b"", *end, _END_SEQ, b""))


class CacheEvents:
    """The engine's KvEventSink: cache changes as vLLM events.

    Per claim, evictions first, then one BlockStored per run of consecutive new blocks (its
    parent is the block before the run). Evicting first is exact: a stored block is pinned, so
    a claim never evicts what it stores. Hashes go out as bytes in the map encoding and as ints
    in the array encoding, so a subscriber meets both kinds vLLM declares (ExternalBlockHash).
    `ids`: the token ids of the prompt's tokens (the gRPC sim's tokens are ids already).
    """

    def __init__(self, publisher: KvEventPublisher | KvEventStream, block_tokens: int,
                 ids: Callable[[Sequence[str]], list[int]] = token_ids) -> None:
        self._publisher = publisher
        self._wire = publisher.wire
        self._block = block_tokens
        self._token_ids = ids
        self._as_bytes = publisher.wire is WIRE["map"]

    def claimed(self, prompt: Sequence[str], hashes: Sequence[int], claim: Claim) -> None:
        events: list[KvEvent] = []
        if claim.evicted:
            events.append(self._wire.removed_event(self._ids(claim.evicted)))
        position = {block: i for i, block in enumerate(hashes)}
        runs: list[list[int]] = []
        for i in sorted(position[block] for block in claim.stored):
            if runs and runs[-1][-1] == i - 1:
                runs[-1].append(i)
            else:
                runs.append([i])
        size = self._block
        for run in runs:
            first, last = run[0], run[-1]
            events.append(self._wire.stored_event(
                self._ids([hashes[i] for i in run]),
                self._ids([hashes[first - 1]])[0] if first else None,
                self._token_ids(prompt[first * size:(last + 1) * size]), size))
        self._publisher.publish(events)

    def dropped(self, hashes: Sequence[int], everything: bool) -> None:
        if everything:
            self._publisher.publish([self._wire.cleared()])
        elif hashes:
            self._publisher.publish([self._wire.removed_event(self._ids(hashes))])

    def _ids(self, hashes: Sequence[int]) -> list[int | bytes]:
        if self._as_bytes:
            return [(block & (2**64 - 1)).to_bytes(8, "big") for block in hashes]
        return list(hashes)
