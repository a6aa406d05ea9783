"""EngineLoad: what a worker's engine last said about its own load, and when."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["EngineCounter", "EngineLoad", "EngineSignal", "LoraLoad"]


class EngineCounter(enum.Enum):
    """A cumulative number an engine exports (a counter, or a histogram's sum or count).

    Only differences between two scrapes mean anything: the picker learns each engine's cache
    accuracy and speed from them (picker.fleet.speed, picker.prefix.calibration)."""

    PROMPT_TOKENS = "prompt_tokens"  # prompt tokens received
    PREFIX_QUERIES = "prefix_queries"  # prompt tokens looked up in the prefix cache
    PREFIX_HITS = "prefix_hits"  # of those, found cached
    TTFT_SUM = "ttft_sum"  # seconds, over requests' time to first token
    TTFT_COUNT = "ttft_count"
    ITL_SUM = "itl_sum"  # seconds, over decode steps (inter-token latency)
    ITL_COUNT = "itl_count"
    PREFILL_SECS = "prefill_secs"  # seconds requests spent in prefill
    PREFILL_TOKENS = "prefill_tokens"  # tokens those prefills computed (cache hits excluded)

    # Members are compared by identity, so identity hashing is enough: Enum's own __hash__
    # hashes the member's name in Python, and every scrape and every speed update looks
    # counters up by member (a replay of 12k requests: ~700k lookups, 1% of its CPU).
    __hash__ = object.__hash__


@dataclass(slots=True, frozen=True)
class LoraLoad:
    """An engine's LoRA adapters as `vllm:lora_requests_info` reports them: the adapters with
    requests running and waiting, and how many adapters fit in one batch (`max_lora`).

    vLLM 0.33 lists every adapter with any request in both sets (picker_sim.lora cites why):
    an adapter is never known to be only waiting there; older versions told them apart."""

    running: frozenset[str] = frozenset()
    waiting: frozenset[str] = frozenset()
    max_loras: int | None = None  # None when the engine did not say

    @property
    def in_use(self) -> int:
        """Distinct adapters with requests: the batch places taken or asked for."""
        return len(self.running | self.waiting)


@dataclass(slots=True, frozen=True)
class EngineLoad:
    """One scrape of an engine's metrics; a field is None when the engine does not export it.

    `scraped_at` is time.monotonic() at the scrape, so readers can refuse stale values.
    """

    scraped_at: float
    running: float | None = None
    waiting: float | None = None
    kv_usage: float | None = None  # fraction of KV cache in use, 0..1
    block_size: int | None = None
    num_gpu_blocks: int | None = None
    # LoRA adapters with requests, and the engine's adapter places (vllm:lora_requests_info);
    # None when the engine reports no LoRA (LoRA off, or not vLLM).
    lora: LoraLoad | None = None
    counters: Mapping[EngineCounter, float] = field(default_factory=dict)

    def delta(self, before: EngineLoad, counter: EngineCounter) -> float | None:
        """How much `counter` grew since `before`; None when either scrape lacks it or it went
        backwards (the engine restarted)."""
        now, then = self.counters.get(counter), before.counters.get(counter)
        if now is None or then is None or now < then:
            return None
        return now - then

    def fresh(self, now: float, max_age_secs: float) -> bool:
        return now - self.scraped_at <= max_age_secs


class EngineSignal(enum.Enum):
    """A load signal a policy or scorer may read from a worker's EngineLoad."""

    RUNNING = "running"
    WAITING = "waiting"
    KV_USAGE = "kv_usage"
    LORA = "lora"  # adapters with requests (LoraLoad.in_use); the LoRA scorers read all of it

    def read(self, load: EngineLoad) -> float | None:
        if self is EngineSignal.RUNNING:
            return load.running
        if self is EngineSignal.WAITING:
            return load.waiting
        if self is EngineSignal.LORA:
            return None if load.lora is None else float(load.lora.in_use)
        return load.kv_usage
