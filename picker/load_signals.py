"""EngineLoad: what a worker's engine last said about its own load, and when."""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["EngineLoad", "EngineSignal"]


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
    # LoRA adapters loaded and serving or queued (vllm:lora_requests_info), for adapter affinity.
    loras: frozenset[str] = frozenset()

    def fresh(self, now: float, max_age_secs: float) -> bool:
        return now - self.scraped_at <= max_age_secs


class EngineSignal(enum.Enum):
    """A load signal a policy or scorer may read from a worker's EngineLoad."""

    RUNNING = "running"
    WAITING = "waiting"
    KV_USAGE = "kv_usage"

    def read(self, load: EngineLoad) -> float | None:
        if self is EngineSignal.RUNNING:
            return load.running
        if self is EngineSignal.WAITING:
            return load.waiting
        return load.kv_usage
