"""Workers with `connection_mode: grpc`: the picker's discovery (its tokenizer included), health
checks and load polling speak the engine's gRPC service (a gRPC sim process, real sockets on
loopback)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
from smg_grpc_proto.generated import sglang_scheduler_pb2 as pb
from smg_grpc_proto.generated import sglang_scheduler_pb2_grpc as pb_grpc

from picker.config import PickerConfig
from picker.fleet.engine_scrape import LoadMonitor, LoadSettings
from picker.fleet.health import HealthChecker, HealthSettings
from picker.fleet.manager import WorkerManager, WorkerPatch
from picker.fleet.registry import WorkerRegistry
from picker.fleet.served_models import DiscoverySettings
from picker.fleet.worker_spec import ConnectionMode, RuntimeType, WorkerSpec
from picker.runtime import PickerRuntime
from picker.tokens import load_tokenizer
from picker_bench.stack import SimSpec, free_port, start_sims
from picker_bench.tokenizer_dirs import build_tokenizer_dir
from tests.waiting import eventually


@contextlib.asynccontextmanager
async def streams(target: str, count: int) -> AsyncIterator[None]:
    """`count` long generations in flight on the sim while the block runs."""
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.SglangSchedulerStub(channel)

        async def one(rid: str) -> None:
            request = pb.GenerateRequest(
                request_id=rid, tokenized=pb.TokenizedInput(input_ids=[1, 2, 3]),
                sampling_params=pb.SamplingParams(max_new_tokens=500), stream=True)
            async for _ in stub.Generate(request):
                pass

        tasks = [asyncio.create_task(one(f"s{i}")) for i in range(count)]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


async def test_a_grpc_worker_is_discovered_loaded_and_ejected_when_killed(
        tmp_path: Path) -> None:
    spec = SimSpec("g1", "sim-model", ["--grpc", "--max-concurrency", "1", "--tpot-ms", "20"])
    [sim] = start_sims([spec], tmp_path)
    registry = WorkerRegistry([])
    manager = WorkerManager(registry, DiscoverySettings())
    health = HealthChecker(registry, HealthSettings(interval_secs=0.1, timeout_secs=1.0))
    load = LoadMonitor(registry, LoadSettings(interval_secs=0.1, timeout_secs=1.0))
    await manager.start()
    try:
        # Registered without models: GetModelInfo names them, GetServerInfo the ranks.
        registered = await manager.register(WorkerSpec(
            url=f"grpc://127.0.0.1:{spec.port}", connection_mode=ConnectionMode.GRPC,
            runtime_type=RuntimeType.SGLANG))
        [worker] = registered.workers
        assert (worker.spec.models, worker.spec.model_id, worker.spec.dp_size) == (
            ["sim-model"], "sim-model", 1)
        await health.start()
        await load.start()
        await eventually(lambda: worker.engine is not None, what="a first GetLoads")
        assert worker.engine is not None
        assert (worker.engine.running, worker.engine.waiting, worker.engine.kv_usage) == (
            0.0, 0.0, 0.0)
        async with streams(f"127.0.0.1:{spec.port}", 3):
            # One running slot: one request runs, two wait, its one slot is all in use.
            await eventually(lambda: worker.engine is not None and (
                worker.engine.running, worker.engine.waiting, worker.engine.kv_usage) == (
                1.0, 2.0, 1.0), what="the sim's load under three streams")
        assert worker.healthy
        sim.kill()
        # failure_threshold 2 at 0.1 s: ejected well within a second of the kill.
        await eventually(lambda: not worker.healthy, timeout=3, what="the ejection")
    finally:
        await load.stop()
        await health.stop()
        await manager.stop()
        sim.stop()


async def test_a_worker_without_tokenizer_path_gets_its_engines_tokenizer(
        tmp_path: Path) -> None:
    """GetTokenizer streams the sim's tokenizer directory; the picker unpacks it into its cache
    and loads it: the same token ids as the directory itself."""
    directory = build_tokenizer_dir(tmp_path / "llama", "llama-3.1")
    spec = SimSpec("g2", "sim-model", ["--grpc", "--tokenizer", str(directory)])
    [sim] = start_sims([spec], tmp_path)
    cache = tmp_path / "cache"
    manager = WorkerManager(WorkerRegistry([]), DiscoverySettings(tokenizer_cache_dir=str(cache)))
    await manager.start()
    try:
        [worker] = (await manager.register(WorkerSpec(
            url=f"grpc://127.0.0.1:{spec.port}", connection_mode=ConnectionMode.GRPC,
            runtime_type=RuntimeType.SGLANG))).workers
        fetched = Path(worker.spec.tokenizer_path or "")
        assert fetched.parent == cache  # not GetModelInfo's path: the engine's own files
        body = {"messages": [{"role": "system", "content": "be brief"},
                             {"role": "user", "content": "say café"}]}
        assert load_tokenizer(str(fetched)).body_ids(body) == \
            load_tokenizer(str(directory)).body_ids(body)
    finally:
        await manager.stop()
        sim.stop()


async def test_the_configurations_workers_are_discovered_once_their_engines_answer(
        tmp_path: Path) -> None:
    """The configuration's workers are adopted as given at start-up, so the picker serves
    before its engines answer; what they leave out is discovered after: a gRPC worker's models
    and tokenizer (without which it cannot take a chat), and the models of an HTTP engine
    that starts after the picker (until then none declared means any model)."""
    grpc_engine = SimSpec("g1", "sim-model", ["--grpc", "--tokenizer",
                                              str(build_tokenizer_dir(tmp_path / "tok",
                                                                      "llama-3.1"))])
    late = SimSpec("h1", "late-model", [], port=free_port())
    [sim] = start_sims([grpc_engine], tmp_path)
    runtime = PickerRuntime(PickerConfig.model_validate({
        "admin": {"enabled": False}, "health": {"enabled": False},
        "discovery": {"backoff_initial_secs": 0.05, "backoff_max_secs": 0.2},
        "workers": [{"url": f"grpc://127.0.0.1:{grpc_engine.port}", "connection_mode": "grpc",
                     "runtime_type": "sglang"},
                    {"url": f"http://127.0.0.1:{late.port}"}]}))
    on_grpc, on_http = runtime.registry.workers()
    await runtime.start()
    try:
        await eventually(lambda: on_grpc.spec.models == ["sim-model"], what="GetModelInfo")
        tokenizer = on_grpc.spec.tokenizer_path
        assert tokenizer is not None and load_tokenizer(tokenizer).encode(
            "hello", add_special_tokens=False)
        await asyncio.sleep(0.5)  # tries against the engine that is not up yet
        assert on_http.spec.models == []
        await runtime.manager.change(on_http.id, WorkerPatch(priority=7))  # it stands
        [late_sim] = start_sims([late], tmp_path)
        try:
            await eventually(lambda: on_http.spec.models == ["late-model"],
                             what="/v1/models once the engine is up")
            assert runtime.registry.get_by_url(on_http.url) is on_http  # in place
            assert on_http.spec.priority == 7
        finally:
            late_sim.stop()
    finally:
        await runtime.stop()
        sim.stop()
