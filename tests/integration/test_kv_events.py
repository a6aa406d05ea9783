"""The KV-event subscriber over real ZMQ on loopback: the project's vLLM-format publisher (the
one the simulator uses), raw sockets for malformed traffic, and a simulated engine's cache."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import httpx
import pytest
import zmq
from prometheus_client import CollectorRegistry

from picker.fleet.registry import WorkerRegistry
from picker.fleet.worker_spec import KvEventsEndpoint, WorkerSpec
from picker.prefix.index import PromptBlocks
from picker.prefix.kv_apply import KvEventMetrics
from picker.prefix.kv_events import KvEventHub
from picker.prefix.kv_index import SyncPrefixIndex
from picker.prefix.kv_settings import KvEventSettings
from picker_bench.stack import free_port
from picker_sim.kv_formats import WIRE, Encoding
from picker_sim.kv_publisher import KvEventPublisher
from tests.sim_thread import running_sim
from tests.waiting import eventually

B = 4


@dataclass
class Subscribed:
    index: SyncPrefixIndex
    metrics: CollectorRegistry
    workers: WorkerRegistry
    hub: KvEventHub

    def problems(self, problem: str, worker: str = "w") -> float:
        value = self.metrics.get_sample_value("llm_picker_kv_event_problems_total",
                                              {"worker": worker, "problem": problem})
        return value or 0.0

    def all_problems(self) -> float:
        return sum(sample.value for family in self.metrics.collect()
                   if family.name == "llm_picker_kv_event_problems"
                   for sample in family.samples if sample.name.endswith("_total"))

    def overlaps(self, worker: str = "w") -> float:
        value = self.metrics.get_sample_value("llm_picker_kv_event_overlaps_total",
                                              {"worker": worker})
        return value or 0.0

    def held(self, *blocks: int, worker: str = "w") -> int:
        toks = [value for value in blocks for _ in range(B)]
        return self.index.match(PromptBlocks("m", toks, True), [worker]).blocks(worker)


async def subscribe(*specs: WorkerSpec) -> Subscribed:
    workers = WorkerRegistry(list(specs))
    index = SyncPrefixIndex(KvEventSettings(pending_secs=0, replay_timeout_secs=1))
    metrics = CollectorRegistry()
    hub = KvEventHub(workers, index, KvEventSettings(reconnect_max_secs=0.2),
                     KvEventMetrics(metrics))
    await hub.start()
    return Subscribed(index, metrics, workers, hub)


def spec(port: int, replay: int | None, worker_id: str = "w",
         url: str = "127.0.0.1:9") -> WorkerSpec:
    kv = KvEventsEndpoint(endpoint=f"tcp://127.0.0.1:{port}",
                          replay_endpoint=None if replay is None else f"tcp://127.0.0.1:{replay}")
    return WorkerSpec(url=url, id=worker_id, models=["m"], kv_block_size=B, kv_events=kv)


def h(*path: int) -> bytes:
    return hashlib.sha256(repr(path).encode()).digest()[:8]


def stored(pub: KvEventPublisher, *path: int, start: int = 0) -> None:
    pub.publish([pub.wire.stored_event(
        [h(*path[:i + 1]) for i in range(start, len(path))], h(*path[:start]) if start else None,
        [v for v in path[start:] for _ in range(B)], B)])


@pytest.fixture
async def ports() -> AsyncIterator[tuple[int, int]]:
    yield free_port(), free_port()


@pytest.mark.parametrize("encoding", ["map", "array"])
async def test_stored_removed_and_cleared_are_applied(ports: tuple[int, int],
                                                      encoding: Encoding) -> None:
    pub = KvEventPublisher("127.0.0.1", *ports, encoding=encoding)
    sub = await subscribe(spec(*ports))
    try:
        stored(pub, 1, 2)  # may be published before the SUB joins: replay recovers it
        # So may this one, on a loaded machine (then nothing arrives to show a gap): it is
        # published again, a fresh sequence number each time, until it is seen.
        for _ in range(10):
            stored(pub, 1, 2, 3, start=2)
            with contextlib.suppress(AssertionError):
                await eventually(lambda: sub.held(1, 2, 3) == 3, timeout=0.5)
                break
        await eventually(lambda: sub.held(1, 2, 3) == 3)
        pub.publish([pub.wire.removed_event([h(1, 2)])])
        await eventually(lambda: sub.held(1, 2, 3) == 1)
        pub.publish([pub.wire.cleared()])
        await eventually(lambda: sub.index.blocks_of("w") == 0)
        counted = sub.metrics.get_sample_value("llm_picker_kv_events_total",
                                               {"worker": "w", "event": "stored"})
        assert counted is not None and counted >= 2  # more if the second was published again
        # A clean start: the replay's overlap with the live stream is no problem.
        assert sub.all_problems() == 0
    finally:
        await sub.hub.stop()
        pub.close()


async def test_a_dropped_batch_is_replayed_and_the_index_converges(
        ports: tuple[int, int]) -> None:
    pub = KvEventPublisher("127.0.0.1", *ports)
    sub = await subscribe(spec(*ports))
    try:
        stored(pub, 1)
        await eventually(lambda: sub.held(1) == 1)
        pub.dropped_next = 1  # the next batch never reaches the SUB socket
        stored(pub, 1, 2, start=1)
        stored(pub, 1, 2, 3, start=2)  # its seq skips one: replay from the missing one
        await eventually(lambda: sub.held(1, 2, 3) == 3)
        assert sub.problems("gap") == 1 and sub.problems("orphan_block") == 0
    finally:
        await sub.hub.stop()
        pub.close()


async def test_without_a_replay_endpoint_a_gap_is_counted_and_following_goes_on(
        ports: tuple[int, int]) -> None:
    pub = KvEventPublisher("127.0.0.1", ports[0])
    sub = await subscribe(spec(ports[0], None))
    try:
        for attempt in range(100):  # the SUB joins some ms after connect: probe until it has
            stored(pub, 100 + attempt)
            await asyncio.sleep(0.02)
            if sub.index.blocks_of("w"):
                break
        pub.dropped_next = 1
        stored(pub, 5)
        stored(pub, 6)
        await eventually(lambda: sub.held(6) == 1)
        assert sub.held(5) == 0 and sub.problems("gap") == 1
    finally:
        await sub.hub.stop()
        pub.close()


async def test_an_engine_restart_clears_its_state(ports: tuple[int, int]) -> None:
    pub = KvEventPublisher("127.0.0.1", *ports)
    sub = await subscribe(spec(*ports))
    try:
        stored(pub, 1, 2)
        await eventually(lambda: sub.held(1, 2) == 2)
        pub.close()  # the engine dies: the connection drops
        await asyncio.sleep(0.2)
        pub = KvEventPublisher("127.0.0.1", *ports)  # a new process: seq from 0, empty cache
        stored(pub, 7)
        await eventually(lambda: sub.held(7) == 1)
        assert sub.held(1, 2) == 0
        assert sub.problems("engine_restart") >= 1
    finally:
        await sub.hub.stop()
        pub.close()


async def test_undecodable_payloads_are_counted_and_the_stream_goes_on(
        ports: tuple[int, int]) -> None:
    context = zmq.Context()
    raw = context.socket(zmq.PUB)
    raw.bind(f"tcp://127.0.0.1:{ports[0]}")
    sub = await subscribe(spec(ports[0], None))
    good = WIRE["map"].batch([WIRE["map"].stored_event([b"x"], None, [9] * B, B)], 0.0, 0)
    try:
        frames: Sequence[Sequence[bytes]] = [
            [b"", (0).to_bytes(8, "big"), b"\xc1garbage"],
            [b"", b"short", b"{}"],
            [b"only one frame"],
            [b"", (1).to_bytes(8, "big"), good],
        ]
        for _ in range(100):  # until the SUB has joined and the good batch landed
            for message in frames:
                raw.send_multipart(list(message))
            await asyncio.sleep(0.02)
            if sub.held(9):
                break
        assert sub.held(9) == 1
        assert sub.problems("undecodable") >= 3
    finally:
        await sub.hub.stop()
        raw.close(linger=0)
        context.term()


async def test_each_data_parallel_rank_follows_its_own_port(ports: tuple[int, int]) -> None:
    """vLLM offsets rank r's ports by r; `{base}@{r}` workers subscribe there."""
    base, _ = ports
    rank0 = KvEventPublisher("127.0.0.1", base)
    rank1 = KvEventPublisher("127.0.0.1", base + 1, data_parallel_rank=1)
    sub = await subscribe(spec(base, None, "r0", "http://127.0.0.1:9@0"),
                          spec(base, None, "r1", "http://127.0.0.1:9@1"))
    try:
        for _ in range(100):
            stored(rank0, 1)
            stored(rank1, 2)
            await asyncio.sleep(0.02)
            if sub.held(1, worker="r0") and sub.held(2, worker="r1"):
                break
        assert (sub.held(1, worker="r0"), sub.held(2, worker="r0")) == (1, 0)
        assert (sub.held(1, worker="r1"), sub.held(2, worker="r1")) == (0, 1)
        assert sub.problems("foreign_rank", "r1") == 0
    finally:
        await sub.hub.stop()
        rank0.close()
        rank1.close()


async def test_the_simulator_publishes_what_its_cache_does(ports: tuple[int, int]) -> None:
    """Real HTTP requests fill the sim's block cache; its events make the index agree with it,
    eviction included; /reset_prefix_cache clears it."""
    with running_sim(kv_events_port=ports[0], kv_replay_port=ports[1], block_tokens=B,
                     cache_blocks=6) as url:
        sub = await subscribe(spec(*ports))
        try:
            async with httpx.AsyncClient(base_url=url) as client:
                async def send(text: str) -> list[int]:
                    body = {"model": "m", "prompt": text, "max_tokens": 1}
                    assert (await client.post("/v1/completions", json=body)).status_code == 200
                    return (await client.post("/tokenize", json=body)).json()["tokens"]  # type: ignore[no-any-return]

                def held(toks: list[int]) -> int:
                    return sub.index.match(PromptBlocks("m", toks, True), ["w"]).blocks("w")

                first = await send(" ".join(f"a{i}" for i in range(16)))  # 4 blocks
                await eventually(lambda: held(first) == 4)
                second = await send(" ".join(f"b{i}" for i in range(16)))  # evicts 2 of first
                await eventually(lambda: held(second) == 4)
                await eventually(lambda: sub.index.blocks_of("w") == 6)
                assert held(first) == 0  # its head was the least recently used
                assert (await client.post("/reset_prefix_cache")).status_code == 200
                await eventually(lambda: sub.index.blocks_of("w") == 0)
        finally:
            await sub.hub.stop()
