"""Engine load signals: scrape each worker's Prometheus /metrics into an EngineLoad.

The poller does the I/O; `parse_engine_load` is a pure function of the text; the metric names
of each engine are the data table ENGINE_METRICS, not branches. Values are summed over label
sets (several models or data-parallel ranks behind one port).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping

import httpx
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel, ConfigDict, Field

from picker.load_signals import EngineLoad
from picker.registry import Worker, WorkerRegistry
from picker.worker_tasks import WorkerTasks
from picker.workers import RuntimeType

__all__ = ["ENGINE_METRICS", "LoadMonitor", "LoadSettings", "parse_engine_load"]

log = logging.getLogger("llm_picker.load")

# EngineLoad field -> metric names (first found wins), per runtime. Sources: vLLM
# vllm/v1/metrics/loggers.py (kv_cache_usage_perc replaced gpu_cache_usage_perc in v0.10),
# SGLang python/sglang/srt/metrics/collector.py.
ENGINE_METRICS: Mapping[RuntimeType, Mapping[str, tuple[str, ...]]] = {
    RuntimeType.VLLM: {
        "running": ("vllm:num_requests_running",),
        "waiting": ("vllm:num_requests_waiting",),
        "kv_usage": ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
    },
    RuntimeType.SGLANG: {
        "running": ("sglang:num_running_reqs",),
        "waiting": ("sglang:num_queue_reqs",),
        "kv_usage": ("sglang:token_usage",),
    },
    RuntimeType.TRTLLM: {},
    RuntimeType.EXTERNAL: {},
}
# vLLM publishes its cache geometry and its active LoRA adapters as labels of info gauges.
_CACHE_CONFIG = "vllm:cache_config_info"
_LORA_INFO = "vllm:lora_requests_info"


class LoadSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    interval_secs: float = Field(default=1.0, gt=0)
    timeout_secs: float = Field(default=1.0, gt=0)
    stale_after_secs: float = Field(default=5.0, gt=0)
    max_concurrency: int = Field(default=16, ge=1)


def parse_engine_load(text: str, runtime: RuntimeType, now: float) -> EngineLoad:
    """Never raises: text that does not parse yields an EngineLoad with nothing known."""
    wanted = ENGINE_METRICS.get(runtime, {})
    by_name: dict[str, float] = {}
    geometry: dict[str, int] = {}
    loras: set[str] = set()
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == _CACHE_CONFIG or sample.name == _CACHE_CONFIG + "_total":
                    for key in ("block_size", "num_gpu_blocks"):
                        value = sample.labels.get(key, "")
                        if value.isdigit():
                            geometry[key] = int(value)
                elif sample.name == _LORA_INFO:
                    for key in ("running_lora_adapters", "waiting_lora_adapters"):
                        loras.update(n for n in sample.labels.get(key, "").split(",") if n)
                else:
                    by_name[sample.name] = by_name.get(sample.name, 0.0) + sample.value
    except (ValueError, TypeError, IndexError):
        return EngineLoad(scraped_at=now)
    values: dict[str, float | None] = {}
    for field_name, names in wanted.items():
        values[field_name] = next((by_name[n] for n in names if n in by_name), None)
    return EngineLoad(
        scraped_at=now, running=values.get("running"), waiting=values.get("waiting"),
        kv_usage=values.get("kv_usage"), block_size=geometry.get("block_size"),
        num_gpu_blocks=geometry.get("num_gpu_blocks"), loras=frozenset(loras),
    )


class LoadMonitor:
    """One polling task per worker, one shared HTTP client, bounded concurrent scrapes."""

    def __init__(self, workers: WorkerRegistry, settings: LoadSettings,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._workers = workers
        self._settings = settings
        self._clock = clock
        self._tasks = WorkerTasks(workers, self._poll)
        self._client: httpx.AsyncClient | None = None
        self._gate: asyncio.Semaphore | None = None

    async def start(self) -> None:
        if not self._settings.enabled:
            return
        self._client = httpx.AsyncClient()
        self._gate = asyncio.Semaphore(self._settings.max_concurrency)
        self._tasks.start()

    async def stop(self) -> None:
        await self._tasks.stop()
        if self._client is not None:
            await self._client.aclose()

    async def _poll(self, worker: Worker) -> None:
        while True:
            await self.scrape(worker)
            interval = worker.spec.load_monitor_interval_secs or self._settings.interval_secs
            await asyncio.sleep(interval)

    async def scrape(self, worker: Worker) -> None:
        """One scrape; a failure keeps the previous value, which then goes stale."""
        assert self._client is not None and self._gate is not None
        headers = {}
        if worker.spec.api_key is not None:
            headers["authorization"] = f"Bearer {worker.spec.api_key.get_secret_value()}"
        async with self._gate:
            try:
                response = await self._client.get(
                    worker.spec.network_url + "/metrics", headers=headers,
                    timeout=self._settings.timeout_secs,
                )
            except httpx.HTTPError:
                return
        if response.is_success:
            worker.engine = parse_engine_load(response.text, worker.spec.runtime_type,
                                              self._clock())
