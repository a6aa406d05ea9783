"""`llm-picker bench kv-events`: how fast KV events are ingested, and what ingesting them at a
given rate does to routing latency.

1. The apply path alone (decode with msgspec + re-hash into the sync index), one core.
2. The same over real ZMQ into a running subscriber (publisher in a thread of this process).
3. A real `llm-picker serve` (prefix_cache over the sync index, hf tokenizer) asked for
   decisions over ext_proc gRPC at a steady pace, first idle, then while this process publishes
   BlockStored events to it at each given rate; p50/p99 compared with the idle phase of the
   same run.
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
from prometheus_client import CollectorRegistry

from extproc._pb import PROCESS_METHOD
from extproc._pb import ext_proc_pb2 as pb
from picker.fleet.registry import Worker, WorkerRegistry
from picker.fleet.worker_spec import KvEventsEndpoint, WorkerSpec
from picker.prefix.kv_apply import EventApplier, KvEventMetrics
from picker.prefix.kv_events import KvEventHub
from picker.prefix.kv_index import SyncPrefixIndex
from picker.prefix.kv_settings import KvEventSettings
from picker_bench.loopback import loopback
from picker_bench.stack import SimSpec, free_port, start_picker, start_sims
from picker_sim.hf_twin import write_hf_twin
from picker_sim.kv_formats import WIRE, KvEvent, WireFormat
from picker_sim.kv_publisher import KvEventPublisher

__all__ = ["run_kv_events"]

BLOCK = 16
VOCAB = 1000


class _Chains:
    """BlockStored events of one block each, chained 32 deep then restarted: the shape vLLM
    emits as requests fill blocks, at the most events per stored token."""

    def __init__(self, wire: WireFormat, seed: int) -> None:
        self._wire = wire
        self._rng = random.Random(seed)
        self._parent: int | None = None
        self._depth = 0
        self._next_hash = seed << 40

    def events(self, count: int) -> list[KvEvent]:
        out: list[KvEvent] = []
        for _ in range(count):
            self._next_hash += 1
            out.append(self._wire.stored_event(
                [self._next_hash], self._parent,
                [self._rng.randrange(VOCAB) for _ in range(BLOCK)], BLOCK))
            self._parent, self._depth = self._next_hash, self._depth + 1
            if self._depth == 32:
                self._parent, self._depth = None, 0
        return out


def _worker(worker_id: str, kv: KvEventsEndpoint | None = None) -> WorkerSpec:
    return WorkerSpec(url=f"http://127.0.0.1:{free_port()}", id=worker_id, models=["m"],
                      kv_block_size=BLOCK, kv_events=kv)


def apply_rate(events: int = 100_000, per_batch: int = 100) -> float:
    """Events per second through decode + apply, in this thread."""
    wire = WIRE["map"]
    chains = _Chains(wire, seed=1)
    payloads = [wire.batch(chains.events(per_batch), 0.0, 0)
                for _ in range(events // per_batch)]
    applier = EventApplier(Worker(_worker("w")), SyncPrefixIndex(KvEventSettings()),
                           KvEventMetrics(CollectorRegistry()))
    started = time.perf_counter()
    for payload in payloads:
        applier.apply(payload)
    return len(payloads) * per_batch / (time.perf_counter() - started)


def zmq_rate(events: int = 100_000, per_batch: int = 100) -> float:
    """Events per second from a publisher thread into a running subscriber, over loopback."""
    port = free_port()
    publisher = KvEventPublisher("127.0.0.1", port)
    kv = KvEventsEndpoint(endpoint=f"tcp://127.0.0.1:{port}")
    workers = WorkerRegistry([_worker("w", kv)])
    index = SyncPrefixIndex(KvEventSettings(max_blocks_per_worker=events + 1))
    chains = _Chains(publisher.wire, seed=2)
    batches = [chains.events(per_batch) for _ in range(events // per_batch)]

    async def run() -> float:
        hub = KvEventHub(workers, index, KvEventSettings(), KvEventMetrics(CollectorRegistry()))
        await hub.start()
        try:
            while not index.blocks_of("w"):  # until the subscription is live
                publisher.publish(chains.events(1))
                await asyncio.sleep(0.01)
            base = index.blocks_of("w")
            started = time.perf_counter()
            sender = threading.Thread(target=_publish_all, args=(publisher, batches))
            sender.start()
            deadline = started + 60
            while index.blocks_of("w") < base + events and time.perf_counter() < deadline:
                await asyncio.sleep(0.001)
            elapsed = time.perf_counter() - started
            sender.join()
            return (index.blocks_of("w") - base) / elapsed
        finally:
            await hub.stop()
            publisher.close()

    return asyncio.run(run())


def _publish_all(publisher: KvEventPublisher, batches: list[list[KvEvent]]) -> None:
    for batch in batches:
        publisher.publish(batch)


def _decisions(port: int, bodies: Iterator[bytes], seconds: float, pace: float) -> list[float]:
    """Sequential decisions at one per `pace` seconds; round-trip times in seconds."""
    timings: list[float] = []
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.stream_stream(PROCESS_METHOD,
                                     request_serializer=pb.ProcessingRequest.SerializeToString,
                                     response_deserializer=pb.ProcessingResponse.FromString)
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            tick = time.perf_counter()
            headers = pb.ProcessingRequest()
            headers.protocol_config.request_body_mode = pb.BUFFERED
            for key, value in ((":path", "/v1/chat/completions"), (":method", "POST"),
                               ("content-type", "application/json")):
                entry = headers.request_headers.headers.headers.add()
                entry.key, entry.raw_value = key, value.encode()
            body = pb.ProcessingRequest()
            body.request_body.body = next(bodies)
            body.request_body.end_of_stream = True
            replies = call(iter([headers, body]), timeout=5)
            next(replies)  # headers answer
            next(replies)  # the routing answer
            timings.append(time.perf_counter() - tick)
            replies.cancel()
            time.sleep(max(0.0, pace - (time.perf_counter() - tick)))
    return timings


def _publish_at(publishers: list[KvEventPublisher], rate: int, stop: threading.Event) -> None:
    """BlockStored events at `rate` per second, in 100 ticks a second, until `stop`."""
    chains = [_Chains(p.wire, seed=10 + i) for i, p in enumerate(publishers)]
    per_tick = max(1, rate // 100 // len(publishers))
    tick = time.perf_counter()
    while not stop.is_set():
        for publisher, chain in zip(publishers, chains, strict=True):
            publisher.publish(chain.events(per_tick))
        tick += 0.01
        time.sleep(max(0.0, tick - time.perf_counter()))


def _applied(admin_port: int) -> float:
    text = loopback().get(f"http://127.0.0.1:{admin_port}/metrics", timeout=5).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("llm_picker_kv_events_total{"))


def routing_under_ingestion(rates: list[int], seconds: float, pace: float = 0.005,
                            workers: int = 4) -> list[tuple[str, float, float, float]]:
    """[(phase, p50 ms, p99 ms, events/s applied by the picker)], idle first."""
    workdir = Path(tempfile.mkdtemp(prefix="llm-picker-kv-bench-"))
    words = [f"word{i}" for i in range(VOCAB)]
    publishers = [KvEventPublisher("127.0.0.1", free_port()) for _ in range(workers)]
    sims = [SimSpec(f"e{i}", "m", ["--profile", "instant"]) for i in range(workers)]
    procs = start_sims(sims, workdir)
    extproc, admin = free_port(), free_port()
    config = {
        "extproc": {"port": extproc}, "admin": {"port": admin}, "policy": "prefix_cache",
        "prefix": {"enabled": True, "index": "kv_events",
                   "tokenizer": write_hf_twin(words, workdir)},
        "workers": [{"url": f"http://127.0.0.1:{s.port}", "id": s.worker_id, "models": ["m"],
                     "kv_block_size": BLOCK,
                     "kv_events": {"endpoint": f"tcp://127.0.0.1:{p.port}"}}
                    for s, p in zip(sims, publishers, strict=True)],
    }
    procs.append(start_picker(config, workdir, name="picker-kv-bench"))
    rng = random.Random(0)
    systems = [" ".join(rng.choices(words, k=2000)) for _ in range(16)]

    def bodies() -> Iterator[bytes]:
        for i in range(1 << 30):
            yield json.dumps({"model": "m", "messages": [
                {"role": "system", "content": systems[i % len(systems)]},
                {"role": "user", "content": f"question {i}"}]}).encode()

    stream = bodies()
    results: list[tuple[str, float, float, float]] = []
    try:
        _decisions(extproc, stream, 1.0, pace)  # warm-up
        for rate in [0, *rates]:
            stop = threading.Event()
            thread = threading.Thread(target=_publish_at, args=(publishers, rate, stop))
            before = _applied(admin)
            if rate:
                thread.start()
                time.sleep(0.5)  # reach the rate before measuring
            started = time.perf_counter()
            timings = _decisions(extproc, stream, seconds, pace)
            applied = (_applied(admin) - before) / (time.perf_counter() - started
                                                    + (0.5 if rate else 0.0))
            stop.set()
            if rate:
                thread.join()
            cuts = statistics.quantiles(timings, n=100)
            results.append((f"{rate} events/s" if rate else "idle", cuts[49] * 1e3,
                            cuts[98] * 1e3, applied))
    finally:
        for proc in reversed(procs):
            proc.stop()
        for publisher in publishers:
            publisher.close()
    return results


def run_kv_events(rates: list[int], seconds: float) -> int:
    rate = apply_rate()
    print(f"apply path (msgspec decode + re-hash into the sync index), one thread: "
          f"{rate:,.0f} BlockStored events/s (1 block of {BLOCK} tokens each)", flush=True)
    rate = zmq_rate()
    print(f"over ZMQ into a running subscriber (publisher thread in the same process): "
          f"{rate:,.0f} events/s", flush=True)
    results = routing_under_ingestion(rates, seconds)
    idle_p99 = results[0][2]
    print(f"routing latency: ext_proc decisions over gRPC to `llm-picker serve` (prefix_cache, "
          f"kv_events index, hf tokenizer, 2,000-word prompts), one every 5 ms for {seconds:.0f}"
          f" s per phase")
    print(f"{'phase':<18}{'p50':>9}{'p99':>9}{'p99 vs idle':>13}{'applied/s':>12}")
    for phase, p50, p99, applied in results:
        print(f"{phase:<18}{p50:>7.2f}ms{p99:>7.2f}ms{p99 / idle_p99:>12.2f}x{applied:>12,.0f}")
    return 0
