"""Engine load signals: scrape each worker's Prometheus /metrics into an EngineLoad (a gRPC
worker's GetLoads answer: picker.fleet.grpc_load).

The poller does the I/O; `parse_engine_load` is a pure function of the text; the metric names
of each engine are the data table ENGINE_METRICS, not branches.

Which series count: a data-parallel engine labels each rank's series (vLLM `engine="i"`,
SGLang `dp_rank="i"`), and a worker that is one rank reads its own; an engine with priority
scheduling exports a total and a breakdown per priority (SGLang `priority=""` and
`priority="<n>"`), and only the total counts. What is left (several models behind one port, or
every rank for a worker that is the whole engine) is summed, except ratios (KV usage), which
are averaged: a sum of fractions is no fraction.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families
from pydantic import Field

from picker.fleet.engine_load import EngineCounter, EngineLoad, LoraLoad
from picker.fleet.grpc_calls import EngineCallFailed, speaks_grpc
from picker.fleet.grpc_load import load_from_loads
from picker.fleet.registry import Worker, WorkerRegistry
from picker.fleet.worker_loops import WorkerLoops
from picker.fleet.worker_spec import ConnectionMode, PollSecs, RuntimeType
from picker.strict import StrictModel

__all__ = [
    "ENGINE_METRICS", "EngineMetrics", "LoadMonitor", "LoadSettings", "parse_engine_load",
    "scraped",
]

log = logging.getLogger("llm_picker.load")


@dataclass(frozen=True, slots=True)
class EngineMetrics:
    """Where one engine kind publishes each EngineLoad field."""

    # EngineLoad field -> metric names, first one exported wins (renamed metrics, newest first).
    gauges: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # EngineCounter -> sample names (a counter's `_total`, a histogram's `_sum`/`_count`).
    counters: Mapping[EngineCounter, tuple[str, ...]] = field(default_factory=dict)
    # Info gauge whose labels carry the KV-cache geometry (block_size, num_gpu_blocks).
    cache_info: str | None = None
    # Info gauge whose labels list the LoRA adapters running or waiting (comma-separated).
    lora_info: str | None = None
    # Gauges holding the KV-cache geometry as values: (block size, number of blocks).
    geometry_gauges: tuple[str, str] | None = None
    # The label naming a data-parallel rank's series.
    rank_label: str | None = None
    # Label: value of the total where an engine also exports a breakdown by that label.
    total_labels: Mapping[str, str] = field(default_factory=dict)


# Sources: vLLM vllm/v1/metrics/loggers.py (kv_cache_usage_perc replaced gpu_cache_usage_perc
# in v0.10; prefix_cache_queries/hits replaced gpu_prefix_cache_*; inter_token_latency_seconds
# replaced time_per_output_token_seconds; 0.33.0: every per-engine series is labelled
# ["model_name", "engine"], :499, engine = the engine index, :1134), SGLang
# python/sglang/srt/metrics/collector.py, in 0.5.23 srt/observability/metrics_collector.py
# (labels model_name, engine_type, tp/pp/moe_ep_rank, `priority: ""` with priority scheduling
# and `dp_rank` when set, :1382-1392; the per-priority series, :1417-1429; page_size and
# num_pages gauges, :1325-1335; its cached_tokens_total is per cache_source, summed here).
# TRT-LLM's /metrics is JSON iteration stats, not Prometheus text; external APIs publish
# nothing: neither is scraped.
ENGINE_METRICS: Mapping[RuntimeType, EngineMetrics] = {
    RuntimeType.VLLM: EngineMetrics(
        gauges={
            "running": ("vllm:num_requests_running",),
            "waiting": ("vllm:num_requests_waiting",),
            "kv_usage": ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
        },
        counters={
            EngineCounter.PROMPT_TOKENS: ("vllm:prompt_tokens_total",),
            EngineCounter.PREFIX_QUERIES: ("vllm:prefix_cache_queries_total",
                                           "vllm:gpu_prefix_cache_queries_total"),
            EngineCounter.PREFIX_HITS: ("vllm:prefix_cache_hits_total",
                                        "vllm:gpu_prefix_cache_hits_total"),
            EngineCounter.TTFT_SUM: ("vllm:time_to_first_token_seconds_sum",),
            EngineCounter.TTFT_COUNT: ("vllm:time_to_first_token_seconds_count",),
            EngineCounter.ITL_SUM: ("vllm:inter_token_latency_seconds_sum",
                                    "vllm:time_per_output_token_seconds_sum"),
            EngineCounter.ITL_COUNT: ("vllm:inter_token_latency_seconds_count",
                                      "vllm:time_per_output_token_seconds_count"),
            EngineCounter.PREFILL_SECS: ("vllm:request_prefill_time_seconds_sum",),
            EngineCounter.PREFILL_TOKENS: ("vllm:request_prefill_kv_computed_tokens_sum",),
        },
        cache_info="vllm:cache_config_info",
        lora_info="vllm:lora_requests_info",
        rank_label="engine",
    ),
    RuntimeType.SGLANG: EngineMetrics(
        gauges={
            "running": ("sglang:num_running_reqs",),
            "waiting": ("sglang:num_queue_reqs",),
            "kv_usage": ("sglang:token_usage",),
        },
        counters={
            EngineCounter.PROMPT_TOKENS: ("sglang:prompt_tokens_total",),
            EngineCounter.PREFIX_QUERIES: ("sglang:prompt_tokens_total",),
            EngineCounter.PREFIX_HITS: ("sglang:cached_tokens_total",),
            EngineCounter.TTFT_SUM: ("sglang:time_to_first_token_seconds_sum",),
            EngineCounter.TTFT_COUNT: ("sglang:time_to_first_token_seconds_count",),
            EngineCounter.ITL_SUM: ("sglang:inter_token_latency_seconds_sum",
                                    "sglang:time_per_output_token_seconds_sum"),
            EngineCounter.ITL_COUNT: ("sglang:inter_token_latency_seconds_count",
                                      "sglang:time_per_output_token_seconds_count"),
        },
        geometry_gauges=("sglang:page_size", "sglang:num_pages"),
        rank_label="dp_rank",
        total_labels={"priority": ""},
    ),
    RuntimeType.TRTLLM: EngineMetrics(),
    RuntimeType.EXTERNAL: EngineMetrics(),
}
_NOTHING = EngineMetrics()
_GEOMETRY = ("block_size", "num_gpu_blocks")
_LORA_LABELS = ("running_lora_adapters", "waiting_lora_adapters")
_RATIOS = frozenset({"kv_usage"})  # EngineLoad fields that are fractions: averaged, not summed


def scraped(runtime: RuntimeType) -> bool:
    """Whether an engine of this kind publishes anything the picker reads."""
    table = ENGINE_METRICS.get(runtime, _NOTHING)
    return bool(table.gauges or table.cache_info or table.lora_info or table.geometry_gauges)


class LoadSettings(StrictModel):

    enabled: bool = True
    interval_secs: PollSecs = 1.0
    timeout_secs: float = Field(default=1.0, gt=0)
    stale_after_secs: float = Field(default=5.0, gt=0)
    max_concurrency: int = Field(default=16, ge=1)


def parse_engine_load(text: str, runtime: RuntimeType, now: float,
                      rank: int | None = None) -> EngineLoad:
    """Never raises: text that does not parse yields an EngineLoad with nothing known.

    `rank`: the worker's data-parallel rank, whose series are read (None: every rank's).
    Samples that are not finite numbers (NaN, +Inf) are skipped, so an engine never reports
    "NaN waiting" to a policy comparing numbers.
    """
    table = ENGINE_METRICS.get(runtime, _NOTHING)
    info = {table.cache_info, None if table.cache_info is None else table.cache_info + "_total"}
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    geometry: dict[str, int] = {}
    newest_lora: tuple[float, dict[str, str]] | None = None
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if not _counts(sample.labels, table, rank):
                    continue
                if sample.name in info:
                    for key in _GEOMETRY:
                        value = sample.labels.get(key, "")
                        if value.isascii() and value.isdigit() and int(value) > 0:
                            geometry[key] = int(value)
                elif sample.name == table.lora_info:
                    # vLLM sets each adapter combination's series to the time it was current
                    # (loggers.py:1224-1236, set_to_current_time) and never removes the old
                    # ones: the newest is the largest value.
                    if newest_lora is None or sample.value > newest_lora[0]:
                        newest_lora = (sample.value, sample.labels)
                elif math.isfinite(sample.value):
                    sums[sample.name] = sums.get(sample.name, 0.0) + sample.value
                    counts[sample.name] = counts.get(sample.name, 0) + 1
    except (ValueError, TypeError, IndexError):
        return EngineLoad(scraped_at=now)
    if table.geometry_gauges is not None:
        for key, name in zip(_GEOMETRY, table.geometry_gauges, strict=True):
            if counts.get(name) and (size := int(sums[name] / counts[name])) > 0:
                geometry[key] = size
    lora = None if newest_lora is None else _lora_load(newest_lora[1])

    def first(names: tuple[str, ...], ratio: bool = False) -> float | None:
        name = next((n for n in names if n in sums), None)
        if name is None:
            return None
        return sums[name] / counts[name] if ratio else sums[name]

    values = {field_: first(names, field_ in _RATIOS) for field_, names in table.gauges.items()}
    counters = {counter: count for counter, names in table.counters.items()
                if (count := first(names)) is not None}
    return EngineLoad(
        scraped_at=now, running=values.get("running"), waiting=values.get("waiting"),
        kv_usage=values.get("kv_usage"), block_size=geometry.get("block_size"),
        num_gpu_blocks=geometry.get("num_gpu_blocks"), lora=lora,
        counters=counters,
    )


def _lora_load(labels: Mapping[str, str]) -> LoraLoad:
    """The LoRA info gauge's labels: comma-joined adapter names, and `max_lora` (vLLM
    vllm/v1/metrics/loggers.py:1099-1111,1224-1236)."""
    running, waiting = (frozenset(n for n in labels.get(key, "").split(",") if n)
                        for key in _LORA_LABELS)
    slots = labels.get("max_lora", "")
    max_loras = int(slots) if slots.isascii() and slots.isdigit() else None
    return LoraLoad(running, waiting, max_loras)


def _counts(labels: Mapping[str, str], table: EngineMetrics, rank: int | None) -> bool:
    """Whether a sample is one of the series this worker sums: its own rank's (when it is a
    rank and the engine labels ranks), and a total rather than one part of a breakdown."""
    if rank is not None and table.rank_label is not None:
        labelled = labels.get(table.rank_label)
        if labelled not in (None, "", str(rank)):
            return False
    return all(labels.get(key, total) == total for key, total in table.total_labels.items())


class LoadMonitor:
    """One polling task per worker; scrapes bounded and fair as picker.fleet.worker_http makes
    them (an unreachable engine's scrapes never wait in front of a live one's)."""

    def __init__(self, workers: WorkerRegistry, settings: LoadSettings,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._workers = workers
        self._settings = settings
        self._clock = clock
        self._loops = WorkerLoops(workers, self._poll_forever, settings.max_concurrency)

    async def start(self) -> None:
        if not self._settings.enabled:
            return
        self._loops.start()

    async def stop(self) -> None:
        await self._loops.stop()

    async def _poll_forever(self, worker: Worker) -> None:
        while True:
            # Re-read each round: PATCH /workers may change the runtime or the interval. A
            # worker health checks ejected is routed nothing, so its load is worth no request
            # (an unreachable one costs ~0.17 ms of CPU per try); scrapes resume on readmission.
            if worker.healthy and self._reads(worker):
                await self.scrape(worker)
            interval = worker.spec.load_monitor_interval_secs or self._settings.interval_secs
            await asyncio.sleep(interval)

    @staticmethod
    def _reads(worker: Worker) -> bool:
        """Whether the worker publishes load the picker can read: over gRPC, an engine service
        it knows; over HTTP, metric names it knows."""
        if worker.spec.connection_mode is ConnectionMode.GRPC:
            return speaks_grpc(worker.spec)
        return scraped(worker.spec.runtime_type)

    async def scrape(self, worker: Worker) -> None:
        """One scrape (a gRPC worker's GetLoads); a failure keeps the previous value, which
        then goes stale."""
        if worker.spec.connection_mode is ConnectionMode.GRPC:
            try:
                answer = await self._loops.engines.loads(worker.spec, self._settings.timeout_secs)
            except EngineCallFailed as exc:
                log.debug("worker %s: %s", worker.id, exc)
                return
            self._workers.set_engine_load(
                worker, load_from_loads(answer, self._clock(), worker.spec.dp_rank))
            return
        response = await self._loops.requests.get(worker, "/metrics", self._settings.timeout_secs)
        if response is not None and response.is_success:
            self._workers.set_engine_load(
                worker, parse_engine_load(response.text, worker.spec.runtime_type, self._clock(),
                                          worker.spec.dp_rank))
