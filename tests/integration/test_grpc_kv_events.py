"""KV events of gRPC workers over real gRPC on loopback: `llm-picker sim --grpc --kv-events`
streams its cache's events on SubscribeKvEvents, the picker's index takes them, and prefix
routing through real Envoy sends a prompt back to the engine that holds it; a dropped stream
resumes, a gap is replayed, a restarted engine is followed afresh."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from picker.fleet.worker_spec import ConnectionMode, KvEventsEndpoint, RuntimeType, WorkerSpec
from picker_bench.loopback import loopback
from picker_bench.stack import ENVOY_GATEWAY, Fleet, free_port, local_fleet
from picker_bench.tokenizer_dirs import build_tokenizer_dir
from picker_sim.grpc_server import SERVICE
from picker_sim.kv_stream import KvEventStream
from picker_sim.kv_stream import handler as kv_stream_handler
from tests.integration.conftest import FAST_HEALTH, MODEL
from tests.integration.test_grpc_route import grpc_sim, post
from tests.integration.test_kv_events import B, h, subscribe
from tests.waiting import eventually, wait_until


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tokenizer_dir(tmp_path_factory.mktemp("tok") / "llama", "llama-3.1")


def stored(fleet: Fleet) -> dict[str, float]:
    """llm_picker_kv_events_total{event="stored"} by worker, from the picker's metrics."""
    text = loopback().get(f"{fleet.admin_url}/metrics", timeout=5).text
    return {sample.labels["worker"]: sample.value
            for family in text_string_to_metric_families(text)
            if family.name == "llm_picker_kv_events"
            for sample in family.samples
            if sample.name.endswith("_total") and sample.labels["event"] == "stored"}


def cached(answer: httpx.Response) -> int:
    assert answer.status_code == 200, answer.text
    details = answer.json()["usage"].get("prompt_tokens_details") or {}
    return int(details.get("cached_tokens", 0))


def test_the_next_request_with_a_prefix_goes_to_the_engine_holding_it(
        tokenizer_dir: Path) -> None:
    """Two idle engines: without the index, prefix_cache breaks the tie at random, so six
    repeats of a prompt land on the engine that cached it only by its events."""
    sims = [grpc_sim(f"g{i}", tokenizer_dir, "--kv-events", "--block-tokens", "4")
            for i in range(2)]
    for sim in sims:
        sim.worker = {**sim.worker, "kv_events": {}}
    settings = {"prefix": {"enabled": True, "index": "kv_events", "kv_events": {
        "pending_secs": 0}, "tokenizer": {"kind": "hf", "path": str(tokenizer_dir)}}}
    with local_fleet(sims, policy="prefix_cache", body_mode="FULL_DUPLEX_STREAMED",
                     envoy_template=ENVOY_GATEWAY,
                     picker_settings={"extproc": {"tls": "self_signed"}, **FAST_HEALTH,
                                      **settings}) as fleet:
        body = {"model": MODEL, "max_tokens": 1, "messages": [
            {"role": "user", "content": "tell me about the history of " * 12}]}
        assert cached(post(fleet, "/v1/chat/completions", body)) == 0
        wait_until(lambda: sum(stored(fleet).values()) > 0, what="the first BlockStored")
        [holder] = stored(fleet)  # one engine computed the prompt and said so
        for _ in range(6):
            assert cached(post(fleet, "/v1/chat/completions", body)) > 0
        assert list(stored(fleet)) == [holder]  # the repeats stored nothing new elsewhere


@contextlib.asynccontextmanager
async def serving(stream: KvEventStream, port: int) -> AsyncIterator[None]:
    """The sim's SubscribeKvEvents alone, on this loop: stopping it drops the picker's stream."""
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        SERVICE, {"SubscribeKvEvents": kv_stream_handler(stream)}),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    try:
        yield
    finally:
        await server.stop(grace=None)


def grpc_worker(port: int) -> WorkerSpec:
    return WorkerSpec(url=f"grpc://127.0.0.1:{port}", id="w", models=["m"], kv_block_size=B,
                      connection_mode=ConnectionMode.GRPC, runtime_type=RuntimeType.SGLANG,
                      kv_events=KvEventsEndpoint())


def publish(stream: KvEventStream, *path: int, start: int = 0) -> None:
    stream.publish([stream.wire.stored_event(
        [h(*path[:i + 1]) for i in range(start, len(path))], h(*path[:start]) if start else None,
        [v for v in path[start:] for _ in range(B)], B)])


async def test_a_dropped_stream_resumes_where_it_stopped_and_a_gap_is_replayed() -> None:
    port, stream = free_port(), KvEventStream()
    sub = await subscribe(grpc_worker(port))
    try:
        async with serving(stream, port):
            await eventually(lambda: stream.subscribers == 1, what="the subscription")
            publish(stream, 1, 2)
            await eventually(lambda: sub.held(1, 2) == 2)
            stream.dropped_next = 1  # the next batch skips the live stream
            publish(stream, 1, 2, 3, start=2)
            publish(stream, 1, 2, 3, 4, start=3)  # its sequence reveals the gap
            await eventually(lambda: sub.held(1, 2, 3, 4) == 4)
            assert sub.problems("gap") == 1
        # The servicer went away and came back with its history (as a relay keeping one).
        publish(stream, 1, 2, 3, 4, 5, start=4)
        async with serving(stream, port):
            await eventually(lambda: sub.held(1, 2, 3, 4, 5) == 5, timeout=5)
        assert sub.problems("engine_restart") == 0  # resumed, never cleared
    finally:
        await sub.hub.stop()


async def test_a_restarted_engine_refuses_the_resume_and_is_followed_afresh() -> None:
    port, first = free_port(), KvEventStream()
    sub = await subscribe(grpc_worker(port))
    try:
        async with serving(first, port):
            await eventually(lambda: first.subscribers == 1, what="the subscription")
            publish(first, 1, 2)
            await eventually(lambda: sub.held(1, 2) == 2)
        restarted = KvEventStream()  # numbers from 0 again and holds nothing
        async with serving(restarted, port):
            await eventually(lambda: sub.problems("replay_failed") == 1, timeout=5)
            assert sub.held(1, 2) == 0  # what the old process cached is gone
            await eventually(lambda: restarted.subscribers == 1, what="a fresh subscription")
            publish(restarted, 7)
            await eventually(lambda: sub.held(7) == 1)
    finally:
        await sub.hub.stop()
