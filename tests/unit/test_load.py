"""Engine metrics parsing (table-driven) and the load monitor against real HTTP on loopback."""

from __future__ import annotations

import asyncio
import functools
import threading
import time
import unittest.mock
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from prometheus_client import CollectorRegistry, Gauge, generate_latest

from picker.config import load_config
from picker.errors import ConfigError
from picker.fleet.engine_load import LoraLoad
from picker.fleet.engine_scrape import (
    ENGINE_METRICS,
    LoadMonitor,
    LoadSettings,
    parse_engine_load,
    scraped,
)
from picker.fleet.registry import WorkerRegistry
from picker.fleet.worker_spec import RuntimeType, WorkerSpec
from tests.http_stub import StubServer
from tests.sim_thread import running_sim
from tests.waiting import eventually

VLLM = """# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="a"} 3
vllm:num_requests_running{model_name="b"} 1
vllm:num_requests_waiting{model_name="a"} 7
vllm:kv_cache_usage_perc{model_name="a"} 0.25
vllm:cache_config_info{block_size="16",num_gpu_blocks="4096"} 1
vllm:lora_requests_info{max_lora="4",running_lora_adapters="sql,chat",\
waiting_lora_adapters="chat,new"} 1
"""
OLD_VLLM = "vllm:gpu_cache_usage_perc 0.5\nvllm:num_requests_waiting 2\n"
# Both names exported (a transition release): the newer one wins, they are not added up.
BOTH_KV_NAMES = "vllm:kv_cache_usage_perc 0.1\nvllm:gpu_cache_usage_perc 0.9\n"
SGLANG = "sglang:num_running_reqs 5\nsglang:num_queue_reqs 9\nsglang:token_usage 0.8\n"
SGLANG_DP = """sglang:num_running_reqs{dp_rank="0"} 2
sglang:num_running_reqs{dp_rank="1"} 3
sglang:num_queue_reqs{dp_rank="0"} 4
sglang:num_queue_reqs{dp_rank="1"} 6
"""
NOT_FINITE = "vllm:num_requests_waiting NaN\nvllm:kv_cache_usage_perc +Inf\n" \
             "vllm:num_requests_running 2\n"
BAD_GEOMETRY = 'vllm:cache_config_info{block_size="0",num_gpu_blocks="١٠"} 1\n'
NOTHING = (None, None, None, None, None)


@pytest.mark.parametrize(
    ("text", "runtime", "expected"),
    [
        (VLLM, RuntimeType.VLLM, (4, 7, 0.25, 16, 4096)),
        (OLD_VLLM, RuntimeType.VLLM, (None, 2, 0.5, None, None)),
        (BOTH_KV_NAMES, RuntimeType.VLLM, (None, None, 0.1, None, None)),
        (SGLANG, RuntimeType.SGLANG, (5, 9, 0.8, None, None)),
        (SGLANG_DP, RuntimeType.SGLANG, (5, 10, None, None, None)),
        (SGLANG, RuntimeType.VLLM, NOTHING),
        (VLLM, RuntimeType.SGLANG, NOTHING),
        (VLLM, RuntimeType.EXTERNAL, NOTHING),
        (VLLM, RuntimeType.TRTLLM, NOTHING),
        (NOT_FINITE, RuntimeType.VLLM, (2, None, None, None, None)),
        (BAD_GEOMETRY, RuntimeType.VLLM, NOTHING),
        ("this is { not prometheus", RuntimeType.VLLM, NOTHING),
        (VLLM + "vllm:num_requests_waiting{oops 3\n", RuntimeType.VLLM, NOTHING),
        ('{"running": 3}', RuntimeType.VLLM, NOTHING),
        ("", RuntimeType.VLLM, NOTHING),
    ],
    ids=["vllm", "old-vllm", "newer-name-wins", "sglang", "sglang-dp-ranks-summed",
         "sglang-text-read-as-vllm", "vllm-text-read-as-sglang", "external", "trtllm",
         "nan-and-inf-skipped", "bad-geometry-labels", "garbage", "garbage-after-good-lines",
         "json", "empty"],
)
def test_parse(text: str, runtime: RuntimeType,
               expected: tuple[object, object, object, object, object]) -> None:
    load = parse_engine_load(text, runtime, now=10.0)
    assert (load.running, load.waiting, load.kv_usage, load.block_size,
            load.num_gpu_blocks) == expected
    assert load.scraped_at == 10.0


def test_lora_adapters_and_places_are_read_from_the_info_gauge() -> None:
    lora = parse_engine_load(VLLM, RuntimeType.VLLM, 0.0).lora
    assert lora == LoraLoad(frozenset({"sql", "chat"}), frozenset({"chat", "new"}), 4)
    assert lora.in_use == 3  # an adapter in both sets takes one place
    assert parse_engine_load(VLLM, RuntimeType.SGLANG, 0.0).lora is None
    assert parse_engine_load(OLD_VLLM, RuntimeType.VLLM, 0.0).lora is None  # LoRA off
    odd = 'vllm:lora_requests_info{max_lora="x",running_lora_adapters=""} 1\n'
    assert parse_engine_load(odd, RuntimeType.VLLM, 0.0).lora == LoraLoad()


def test_every_runtime_has_a_table_entry_and_only_prometheus_engines_are_scraped() -> None:
    assert set(ENGINE_METRICS) == set(RuntimeType)
    assert {r for r in RuntimeType if scraped(r)} == {RuntimeType.VLLM, RuntimeType.SGLANG}


def test_staleness() -> None:
    load = parse_engine_load(VLLM, RuntimeType.VLLM, now=100.0)
    assert load.fresh(104.0, 5.0) and not load.fresh(106.0, 5.0)


@pytest.mark.parametrize(
    ("overrides", "key"),
    [({"load.interval": 1}, "load.interval"),
     ({"load.interval_secs": 0}, "load.interval_secs"),
     ({"load.stale_after_secs": -1}, "load.stale_after_secs"),
     ({"load.max_concurrency": 0}, "load.max_concurrency")],
)
def test_bad_load_settings_name_the_key(overrides: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(overrides=overrides)
    assert caught.value.key == key


def test_load_settings_come_from_the_config() -> None:
    config = load_config(overrides={"load.interval_secs": 0.5, "load.enabled": False})
    assert config.load == LoadSettings(interval_secs=0.5, enabled=False)


wait_for = functools.partial(eventually, timeout=3.0)


async def test_monitor_follows_the_sim_then_keeps_the_last_value_which_goes_stale() -> None:
    # The global interval is long: the worker's own interval must be the one used.
    settings = LoadSettings(interval_secs=30.0, timeout_secs=0.5)
    try:
        with running_sim(block_tokens=32, cache_blocks=512) as url:
            registry = WorkerRegistry([WorkerSpec(url=url, load_monitor_interval_secs=0.05)])
            worker = registry.workers()[0]
            monitor = LoadMonitor(registry, settings)
            await monitor.start()
            await wait_for(lambda: worker.engine is not None)
            assert worker.engine is not None and worker.engine.waiting == 0
            assert (worker.engine.block_size, worker.engine.num_gpu_blocks) == (32, 512)
            async with httpx.AsyncClient() as client:
                reply = await client.post(f"{url}/sim/control",
                                          json={"extra_waiting": 7, "kv_usage": 0.6})
                assert reply.status_code == 200
            await wait_for(lambda: worker.engine is not None and worker.engine.waiting == 7,
                           timeout=1.0)  # within a few 50 ms intervals
            assert worker.engine.kv_usage == 0.6
            last = worker.engine
        # The engine is gone: scrapes fail, the last value stays and ages past the threshold.
        await asyncio.sleep(0.3)
        assert worker.engine is last
        assert last.fresh(time.monotonic(), 5.0)
        assert not last.fresh(time.monotonic(), 0.25)
    finally:
        await monitor.stop()


async def test_api_key_is_sent_as_bearer_token_and_never_without_one() -> None:
    with_key, without = StubServer(), StubServer()
    try:
        registry = WorkerRegistry([WorkerSpec(url=with_key.url, api_key="sk-load"),
                                   WorkerSpec(url=without.url)])
        monitor = LoadMonitor(registry, LoadSettings(interval_secs=0.05))
        await monitor.start()
        try:
            await wait_for(lambda: len(with_key.auth) >= 2 and len(without.auth) >= 2)
        finally:
            await monitor.stop()
        assert set(with_key.auth) == {"Bearer sk-load"}
        assert set(without.auth) == {None}
        # An empty 200 page parses to "nothing known", not to an error.
        engine = registry.workers()[0].engine
        assert engine is not None and engine.waiting is None
    finally:
        with_key.close()
        without.close()


async def test_failed_scrape_keeps_the_previous_value() -> None:
    failing = StubServer(status=500)
    try:
        registry = WorkerRegistry([WorkerSpec(url=failing.url),
                                   WorkerSpec(url="http://127.0.0.1:1")])
        monitor = LoadMonitor(registry, LoadSettings())
        await monitor.start()
        try:
            for worker in registry.workers():
                before = parse_engine_load(VLLM, RuntimeType.VLLM, 1.0)
                registry.set_engine_load(worker, before)
                await monitor.scrape(worker)  # 500, then connection refused
                assert worker.engine is before
        finally:
            await monitor.stop()
    finally:
        failing.close()


async def test_external_workers_and_a_disabled_monitor_scrape_nothing() -> None:
    stub = StubServer()
    try:
        external = WorkerRegistry([WorkerSpec(url=stub.url, runtime_type=RuntimeType.EXTERNAL)])
        monitor = LoadMonitor(external, LoadSettings(interval_secs=0.02))
        await monitor.start()
        await asyncio.sleep(0.2)
        await monitor.stop()
        disabled = WorkerRegistry([WorkerSpec(url=stub.url)])
        monitor = LoadMonitor(disabled, LoadSettings(enabled=False, interval_secs=0.02))
        await monitor.start()
        await asyncio.sleep(0.2)
        await monitor.stop()
        assert stub.auth == []
    finally:
        stub.close()


class _SlowMetrics:
    """Loopback servers answering /metrics slowly, counting how many answer at once."""

    def __init__(self, servers: int, delay: float) -> None:
        self.now = self.peak = 0
        lock = threading.Lock()
        gauge = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                with lock:
                    gauge.now += 1
                    gauge.peak = max(gauge.peak, gauge.now)
                time.sleep(delay)
                with lock:
                    gauge.now -= 1
                body = b"vllm:num_requests_waiting 1\n"
                self.send_response(200)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.servers = [ThreadingHTTPServer(("127.0.0.1", 0), Handler) for _ in range(servers)]
        self.urls = [f"http://127.0.0.1:{s.server_address[1]}" for s in self.servers]
        for server in self.servers:
            threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True).start()

    def close(self) -> None:
        for server in self.servers:
            server.shutdown()
            server.server_close()


@pytest.fixture
def slow_fleet() -> Iterator[_SlowMetrics]:
    fleet = _SlowMetrics(servers=6, delay=0.15)
    yield fleet
    fleet.close()


async def test_concurrent_scrapes_are_bounded_by_max_concurrency(
        slow_fleet: _SlowMetrics) -> None:
    registry = WorkerRegistry([WorkerSpec(url=url) for url in slow_fleet.urls])
    monitor = LoadMonitor(registry, LoadSettings(max_concurrency=2, timeout_secs=2.0))
    await monitor.start()
    try:
        await asyncio.gather(*(monitor.scrape(w) for w in registry.workers()))
    finally:
        await monitor.stop()
    assert slow_fleet.peak == 2
    assert all(w.engine is not None and w.engine.waiting == 1 for w in registry.workers())


def _exposition(registry: CollectorRegistry) -> str:
    return generate_latest(registry).decode()


def _vllm_dp_metrics(loras: tuple[str, ...] = ("old-a,old-b", "sql", "")) -> str:
    """Two data-parallel engines as vLLM 0.33.0 exports them: every per-engine series labelled
    ["model_name", "engine"] with engine = str(index) (v1/metrics/loggers.py:499-504), the
    cache info per engine (:1114-1136), and the LoRA info gauge set_to_current_time for each
    adapter combination, the stale ones left in place (:1103-1111, :1224-1236)."""
    registry = CollectorRegistry()
    labels = ["model_name", "engine"]
    running = Gauge("vllm:num_requests_running", "", labels, registry=registry)
    waiting = Gauge("vllm:num_requests_waiting", "", labels, registry=registry)
    usage = Gauge("vllm:kv_cache_usage_perc", "", labels, registry=registry)
    for engine, (r, w, u) in enumerate([(3, 5, 0.75), (1, 0, 0.5)]):
        running.labels("m", str(engine)).set(r)
        waiting.labels("m", str(engine)).set(w)
        usage.labels("m", str(engine)).set(u)
    info = Gauge("vllm:cache_config_info", "", ["block_size", "num_gpu_blocks", "engine"],
                 registry=registry)
    for index in ("0", "1"):
        info.labels("16", "4096", index).set(1)
    lora = Gauge("vllm:lora_requests_info", "",
                 ["max_lora", "waiting_lora_adapters", "running_lora_adapters"],
                 registry=registry)
    for second, running_loras in enumerate(loras):  # oldest first
        with unittest.mock.patch("time.time", lambda second=second: 1000.0 + second):
            lora.labels("4", "", running_loras).set_to_current_time()
    return _exposition(registry)


def test_vllm_data_parallel_engines_are_read_per_rank_and_ratios_never_summed() -> None:
    text = _vllm_dp_metrics()
    rank0 = parse_engine_load(text, RuntimeType.VLLM, 0.0, rank=0)
    rank1 = parse_engine_load(text, RuntimeType.VLLM, 0.0, rank=1)
    assert (rank0.running, rank0.waiting, rank0.kv_usage) == (3, 5, 0.75)
    assert (rank1.running, rank1.waiting, rank1.kv_usage) == (1, 0, 0.5)
    whole = parse_engine_load(text, RuntimeType.VLLM, 0.0)  # one worker for every rank
    assert (whole.running, whole.waiting) == (4, 5)
    assert whole.kv_usage == pytest.approx(0.625)  # a mean, not 1.25
    assert (rank1.block_size, rank1.num_gpu_blocks) == (16, 4096)


def test_vllm_lora_info_is_read_from_its_newest_series_only() -> None:
    """The newest combination ("" running: nothing) wins over the stale "sql" and
    "old-a,old-b", which vLLM keeps exporting."""
    load = parse_engine_load(_vllm_dp_metrics(), RuntimeType.VLLM, 0.0)
    assert load.lora == LoraLoad(max_loras=4)
    text = _vllm_dp_metrics(("old-a,old-b", "", "sql"))
    lora = parse_engine_load(text, RuntimeType.VLLM, 0.0).lora
    assert lora is not None and lora.running == {"sql"}


def _sglang_metrics() -> str:
    """SGLang 0.5.23 with priority scheduling and data-parallel ranks: each scheduler's labels
    (srt/observability/metrics_collector.py:1382-1392), the total under priority="" and one
    series per priority (_log_gauge_queue_count, :1417-1429), page geometry (:1325-1335)."""
    registry = CollectorRegistry()
    names = ["model_name", "engine_type", "tp_rank", "pp_rank", "moe_ep_rank", "priority",
             "dp_rank"]
    gauges = {name: Gauge(name, "", names, registry=registry) for name in (
        "sglang:num_running_reqs", "sglang:num_queue_reqs", "sglang:token_usage",
        "sglang:page_size", "sglang:num_pages")}
    for dp_rank, (running, queued, usage) in enumerate([(4, {0: 3, 5: 2}, 0.9), (2, {0: 1}, 0.8)]):
        base = {"model_name": "m", "engine_type": "unified", "tp_rank": "0", "pp_rank": "0",
                "moe_ep_rank": "0", "priority": "", "dp_rank": str(dp_rank)}
        gauges["sglang:num_running_reqs"].labels(**base).set(running)
        gauges["sglang:num_queue_reqs"].labels(**base).set(sum(queued.values()))
        for priority, count in queued.items():
            gauges["sglang:num_queue_reqs"].labels(**{**base, "priority": str(priority)}).set(
                count)
        gauges["sglang:token_usage"].labels(**base).set(usage)
        gauges["sglang:page_size"].labels(**base).set(64)
        gauges["sglang:num_pages"].labels(**base).set(2000)
    return _exposition(registry)


def test_sglang_priority_breakdowns_are_not_added_to_their_total() -> None:
    text = _sglang_metrics()
    rank0 = parse_engine_load(text, RuntimeType.SGLANG, 0.0, rank=0)
    assert (rank0.running, rank0.waiting, rank0.kv_usage) == (4, 5, 0.9)  # not 10 waiting
    rank1 = parse_engine_load(text, RuntimeType.SGLANG, 0.0, rank=1)
    assert (rank1.running, rank1.waiting, rank1.kv_usage) == (2, 1, 0.8)
    whole = parse_engine_load(text, RuntimeType.SGLANG, 0.0)
    assert whole.waiting == 6 and whole.kv_usage == pytest.approx(0.85)
    assert whole.kv_usage is not None and whole.kv_usage <= 1


def test_sglang_page_geometry_is_the_kv_capacity() -> None:
    load = parse_engine_load(_sglang_metrics(), RuntimeType.SGLANG, 0.0, rank=1)
    assert (load.block_size, load.num_gpu_blocks) == (64, 2000)
