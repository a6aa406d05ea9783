"""Each engine's KV-event bytes and replay framing through real ZMQ sockets on loopback, and a
soak against a busy publisher that a subscriber joins late.

Payloads come from structs declared as each engine declares them (tests/kv_engines); the
simulator's publisher only frames them (PUB live, ROUTER replay in the engine's framing).
The soak runs LLM_PICKER_KV_SOAK_SECS seconds (10 by default); the issue's 60 s, opt-in:
    LLM_PICKER_KV_SOAK_SECS=60 .venv/bin/python -m pytest -k soak \
        tests/integration/test_kv_engine_formats.py
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import threading
import time

import pytest

from picker_sim.kv_publisher import KvEventPublisher
from tests import kv_engines as eng
from tests.integration.test_kv_events import B, Subscribed, eventually, ports, spec, subscribe

__all__ = ["ports"]  # the fixture, shared with test_kv_events

SOAK_SECS = float(os.environ.get("LLM_PICKER_KV_SOAK_SECS", "10"))


def publisher(engine: eng.Engine, port: int, replay: int) -> KvEventPublisher:
    return KvEventPublisher("127.0.0.1", port, replay,
                            encoding="map" if engine.replay_has_topic else "array")


def ehash(engine: eng.Engine, path: tuple[int, ...]) -> int | bytes:
    """vLLM 0.10 and SGLang declare int hashes; the others get bytes (vLLM's sha256 default)."""
    digest = hashlib.sha256(repr(path).encode()).digest()[:8]
    if engine in (eng.VLLM_010, eng.SGLANG, eng.SGLANG_MAIN):
        return int.from_bytes(digest, "big", signed=True)
    return digest


def store(engine: eng.Engine, path: tuple[int, ...], start: int) -> object:
    return engine.stored([ehash(engine, path[:i + 1]) for i in range(start, len(path))],
                         ehash(engine, path[:start]) if start else None,
                         [v for v in path[start:] for _ in range(B)], B)


def counted(sub: Subscribed, event: str) -> float:
    value = sub.metrics.get_sample_value("llm_picker_kv_events_total",
                                         {"worker": "w", "event": event})
    return value or 0.0


@pytest.mark.parametrize("engine", eng.ENGINES, ids=lambda e: e.name)
async def test_each_engine_idle_then_live(ports: tuple[int, int], engine: eng.Engine) -> None:
    """Published before the subscriber joins (replay catches up on an idle engine), then live:
    stores with chained parents, a removal, a clear; nothing counted as a restart."""
    pub = publisher(engine, *ports)
    pub.publish_payload(engine.batch(0, [store(engine, (1, 2), 0)]))
    pub.publish_payload(engine.batch(0, [store(engine, (1, 2, 3), 2)]))
    sub = await subscribe(spec(*ports))
    try:
        await eventually(lambda: sub.held(1, 2, 3) == 3)
        pub.publish_payload(engine.batch(0, [engine.removed([ehash(engine, (1, 2))])]))
        await eventually(lambda: sub.held(1, 2, 3) == 1)
        pub.publish_payload(engine.batch(0, [store(engine, (5,), 0), engine.cleared()]))
        await eventually(lambda: sub.index.blocks_of("w") == 0)
        assert counted(sub, "stored") == 3 and counted(sub, "cleared") == 1
        for problem in ("engine_restart", "undecodable", "skipped_event", "replay_failed",
                        "orphan_block"):
            assert sub.problems(problem) == 0, problem
    finally:
        await sub.hub.stop()
        pub.close()


async def test_hybrid_offload_and_lora_events_over_zmq(ports: tuple[int, int]) -> None:
    """vLLM 0.33: a sliding-window group's masked store, an offload placeholder, a LoRA store."""
    engine = eng.VLLM_033
    pub = publisher(engine, *ports)
    sub = await subscribe(spec(*ports))
    path = (1, 2, 3)
    hashes = [ehash(engine, path[:i + 1]) for i in range(3)]
    toks = [v for v in path for _ in range(B)]
    try:
        pub.publish_payload(engine.batch(0, [
            engine.stored(hashes, None, toks, B, group_idx=0),
            engine.stored(hashes[2:], None, toks, B, group_idx=1),  # masked: the tail kept
            eng.vllm_0_33.BlockStored([hashes[2]], None, [], 0, None, "CPU", None,
                                      group_idx=0),  # offloading connector placeholder
            eng.vllm_0_33.BlockStored([b"L1"], None, [7] * B, B, 1, "GPU", "sql",
                                      extra_keys=[("sql",)], group_idx=0),
        ]))
        await eventually(lambda: sub.index.blocks_of("w") == 6)
        pub.publish_payload(engine.batch(0, [engine.removed(hashes[2:], group_idx=0)]))
        await eventually(lambda: sub.index.blocks_of("w") == 5)
        assert sub.held(1, 2, 3) == 3  # group 1 and the CPU copy still hold block 3
        assert sub.index.match(prompt_of([7], "sql"), ["w"]).blocks("w") == 1
        assert sub.index.match(prompt_of([7], "m"), ["w"]).blocks("w") == 0
        assert sub.problems("orphan_block") == 0 and counted(sub, "unplaced") == 0
    finally:
        await sub.hub.stop()
        pub.close()


def prompt_of(blocks: list[int], model: str) -> object:
    from picker.prefix.index import PromptBlocks
    return PromptBlocks(model, [v for v in blocks for _ in range(B)], True)


class _Engine:
    """A cache that stores and evicts blocks at a fixed event rate, publishing each batch."""

    def __init__(self, pub: KvEventPublisher, engine: eng.Engine, seed: int) -> None:
        self.pub, self.engine = pub, engine
        self.held: dict[tuple[int, ...], int | bytes] = {}
        self.rng = random.Random(seed)
        self.stored = 0

    def step(self, events: int) -> None:
        batch = []
        for _ in range(events):
            if self.held and (len(self.held) > 2000 or self.rng.random() < 0.3):
                path = self.rng.choice(list(self.held)) if len(self.held) < 64 else \
                    next(iter(self.held))
                batch.append(self.engine.removed([self.held.pop(path)]))
                continue
            parents = [p for p in self.held if len(p) < 8]
            parent = self.rng.choice(parents[-64:]) if parents and self.rng.random() < 0.7 \
                else ()
            path = (*parent, self.rng.randrange(10**6))
            self.held[path] = ehash(self.engine, path)
            batch.append(store(self.engine, path, len(parent)))
            self.stored += 1
        self.pub.publish_payload(self.engine.batch(0, batch))

    def run(self, seconds: float, per_second: int, stop: threading.Event) -> None:
        """Batches of 10 events at `per_second` events/s, for `seconds` at most."""
        deadline = time.monotonic() + seconds
        next_at = time.monotonic()
        while not stop.is_set() and time.monotonic() < deadline:
            self.step(10)
            next_at += 10 / per_second
            time.sleep(max(0.0, next_at - time.monotonic()))


@pytest.mark.parametrize("engine", [eng.VLLM_033, eng.VLLM_011], ids=lambda e: e.name)
async def test_soak_a_busy_engine_joined_late(ports: tuple[int, int],
                                               engine: eng.Engine) -> None:
    """1,000 events/s; the subscriber joins after a third of the run, so its catch-up replay
    overlaps the live stream. No restart, every event applied once, index exact at the end."""
    pub = publisher(engine, *ports)
    model = _Engine(pub, engine, seed=7)
    stop = threading.Event()
    sender = threading.Thread(target=model.run, args=(SOAK_SECS, 1000, stop), daemon=True)
    sender.start()
    sub: Subscribed | None = None
    try:
        await asyncio.sleep(SOAK_SECS / 3)
        sub = await subscribe(spec(*ports))
        await asyncio.to_thread(sender.join, SOAK_SECS + 30)
        assert not sender.is_alive()
        final = sub
        await eventually(lambda: counted(final, "stored") >= model.stored, timeout=30)
        await eventually(lambda: final.index.blocks_of("w") == len(model.held), timeout=10)
        assert counted(sub, "stored") == model.stored  # each applied exactly once
        for problem in ("engine_restart", "restart_deferred", "orphan_block", "gap",
                        "replay_failed", "undecodable"):
            assert sub.problems(problem) == 0, problem
        held = set(model.held)
        for path in random.Random(1).sample(sorted(held), min(300, len(held))):
            depth = 0
            while depth < len(path) and path[:depth + 1] in held:
                depth += 1
            assert sub.held(*path) == depth, path
    finally:
        stop.set()
        sender.join(timeout=5)
        if sub is not None:
            await sub.hub.stop()
        pub.close()


async def test_a_repeat_is_an_overlap_and_a_new_payload_at_an_old_seq_a_restart(
        ports: tuple[int, int]) -> None:
    """Raw PUB frames: the same (seq, payload) again is dropped; seq 0 with another payload is
    a new publisher (cleared), and a second one within restart_min_interval_secs waits."""
    import zmq
    context = zmq.Context()
    raw = context.socket(zmq.PUB)
    raw.bind(f"tcp://127.0.0.1:{ports[0]}")
    sub = await subscribe(spec(ports[0], None))
    engine = eng.VLLM_033

    def send(seq: int, payload: bytes) -> None:
        raw.send_multipart([b"", seq.to_bytes(8, "big"), payload])

    first = engine.batch(0, [store(engine, (1,), 0)], ts=1.0)
    try:
        for _ in range(100):  # until the SUB has joined
            send(0, first)
            await asyncio.sleep(0.02)
            if sub.held(1):
                break
        second = engine.batch(0, [store(engine, (1, 2), 1)], ts=2.0)
        send(1, second)
        await eventually(lambda: sub.held(1, 2) == 2)
        send(1, second)  # delivered twice (as a replay overlapping the live stream does)
        await eventually(lambda: sub.overlaps() >= 1)
        assert sub.all_problems() == 0 and counted(sub, "stored") == 2
        send(0, engine.batch(0, [store(engine, (5,), 0)], ts=3.0))  # a new process
        await eventually(lambda: sub.held(5) == 1)
        assert sub.held(1, 2) == 0 and sub.problems("engine_restart") == 1
        send(0, engine.batch(0, [store(engine, (6,), 0)], ts=4.0))  # and another, at once
        await eventually(lambda: sub.problems("restart_deferred") == 1)
        assert sub.held(6) == 0 and sub.problems("engine_restart") == 1
    finally:
        await sub.hub.stop()
        raw.close(linger=0)
        context.term()
