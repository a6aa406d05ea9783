"""Engine metrics parsing (table-driven) and the load monitor against a real simulated engine."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from picker.load import LoadMonitor, LoadSettings, parse_engine_load
from picker.registry import WorkerRegistry
from picker.workers import RuntimeType, WorkerSpec
from tests.sim_thread import running_sim

VLLM = """# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="a"} 3
vllm:num_requests_running{model_name="b"} 1
vllm:num_requests_waiting{model_name="a"} 7
vllm:kv_cache_usage_perc{model_name="a"} 0.25
vllm:cache_config_info{block_size="16",num_gpu_blocks="4096"} 1
vllm:lora_requests_info{max_lora="4",running_lora_adapters="sql,chat",waiting_lora_adapters=""} 1
"""
OLD_VLLM = "vllm:gpu_cache_usage_perc 0.5\nvllm:num_requests_waiting 2\n"
SGLANG = "sglang:num_running_reqs 5\nsglang:num_queue_reqs 9\nsglang:token_usage 0.8\n"


@pytest.mark.parametrize(
    ("text", "runtime", "expected"),
    [
        (VLLM, RuntimeType.VLLM, (4, 7, 0.25, 16, 4096)),
        (OLD_VLLM, RuntimeType.VLLM, (None, 2, 0.5, None, None)),
        (SGLANG, RuntimeType.SGLANG, (5, 9, 0.8, None, None)),
        (SGLANG, RuntimeType.VLLM, (None, None, None, None, None)),
        (VLLM, RuntimeType.EXTERNAL, (None, None, None, 16, 4096)),
        ("this is { not prometheus", RuntimeType.VLLM, (None, None, None, None, None)),
        ("", RuntimeType.VLLM, (None, None, None, None, None)),
    ],
    ids=["vllm", "old-vllm", "sglang", "wrong-runtime", "external", "garbage", "empty"],
)
def test_parse(text: str, runtime: RuntimeType,
               expected: tuple[object, object, object, object, object]) -> None:
    load = parse_engine_load(text, runtime, now=10.0)
    assert (load.running, load.waiting, load.kv_usage, load.block_size,
            load.num_gpu_blocks) == expected
    assert load.scraped_at == 10.0


def test_staleness() -> None:
    load = parse_engine_load(VLLM, RuntimeType.VLLM, now=100.0)
    assert load.fresh(104.0, 5.0) and not load.fresh(106.0, 5.0)


async def test_monitor_follows_engine_metrics_and_keeps_stale_values_marked() -> None:
    with running_sim() as url:
        registry = WorkerRegistry([WorkerSpec(url=url, load_monitor_interval_secs=0.05)])
        worker = registry.workers()[0]
        monitor = LoadMonitor(registry, LoadSettings(interval_secs=1.0, timeout_secs=1.0))
        await monitor.start()
        try:
            async with httpx.AsyncClient() as client:
                await client.post(f"{url}/sim/control", json={"extra_waiting": 7,
                                                               "kv_usage": 0.6})
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline and (worker.engine is None
                                                    or worker.engine.waiting != 7):
                await asyncio.sleep(0.02)
            assert worker.engine is not None and worker.engine.waiting == 7
            assert worker.engine.kv_usage == 0.6
        finally:
            await monitor.stop()
    seen = worker.engine.scraped_at
    assert not worker.engine.fresh(seen + 6, 5.0)


async def test_failed_scrape_keeps_the_previous_value() -> None:
    registry = WorkerRegistry([WorkerSpec(url="http://127.0.0.1:1")])
    worker = registry.workers()[0]
    monitor = LoadMonitor(registry, LoadSettings())
    await monitor.start()
    try:
        await monitor.scrape(worker)
        assert worker.engine is None
    finally:
        await monitor.stop()


def test_lora_adapters_are_read_from_the_info_gauge() -> None:
    assert parse_engine_load(VLLM, RuntimeType.VLLM, 0.0).loras == {"sql", "chat"}
