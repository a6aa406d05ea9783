"""The simulated engine's state and latency model, free of HTTP so it is easy to reason about.

Latency is the usual two-term model of a decoding engine: time to first token (prefill) plus a
fixed time per output token. Requests above `max_concurrency` wait for a slot, which is what
makes `num_requests_waiting` and load-aware routing observable.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

__all__ = ["SimConfig", "SimEngine"]

_WORDS = ("the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "again")


@dataclass(slots=True)
class SimConfig:
    model: str = "sim-model"
    worker_id: str = "sim"
    ttft_ms: float = 20.0
    tpot_ms: float = 2.0
    max_tokens_default: int = 16
    max_concurrency: int = 64
    failure_rate: float = 0.0
    seed: int | None = None
    api_key: str | None = None  # when set, OpenAI endpoints require Authorization: Bearer it

    def __post_init__(self) -> None:
        checks = {
            "model": bool(self.model),
            "worker_id": bool(self.worker_id),
            "ttft_ms": self.ttft_ms >= 0,
            "tpot_ms": self.tpot_ms >= 0,
            "max_tokens_default": self.max_tokens_default >= 1,
            "max_concurrency": self.max_concurrency >= 1,
            "failure_rate": 0.0 <= self.failure_rate <= 1.0,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"sim config: invalid {name}={getattr(self, name)!r}")


@dataclass(slots=True)
class SimEngine:
    config: SimConfig
    running: int = 0
    waiting: int = 0
    requests_total: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    _rng: random.Random = field(init=False)
    _slots: asyncio.Semaphore = field(init=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.config.seed)
        self._slots = asyncio.Semaphore(self.config.max_concurrency)

    @asynccontextmanager
    async def admitted(self) -> AsyncIterator[None]:
        """Hold one engine slot for the duration of a request (queued while full)."""
        self.requests_total += 1
        self.waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self.waiting -= 1
        self.running += 1
        try:
            yield
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.running -= 1
            self._slots.release()

    def should_fail(self) -> bool:
        return self.config.failure_rate > 0 and self._rng.random() < self.config.failure_rate

    def output_tokens(self, body: Mapping[str, Any]) -> int:
        for key in ("max_completion_tokens", "max_tokens"):
            value = body.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
        return self.config.max_tokens_default

    async def first_token(self) -> None:
        await asyncio.sleep(self.config.ttft_ms / 1000)

    async def next_token(self) -> None:
        await asyncio.sleep(self.config.tpot_ms / 1000)

    @staticmethod
    def token(index: int) -> str:
        return _WORDS[index % len(_WORDS)] + " "

    def kv_cache_usage(self) -> float:
        return min(1.0, self.running / self.config.max_concurrency)


def toy_tokens(text: str) -> list[str]:
    """The simulator's tokenizer: whitespace words. Deterministic, dependency-free."""
    return text.split()
