"""Per-worker request rate and prefix hit rate over the last minutes, for the status page.

Sampled from the picker's own Prometheus counters (llm_picker_decisions, llm_picker_prefix_hits,
every process's in `serve --workers N`) every `period_secs` by a background task, so the hot
path does no extra work and the page has minutes of history the moment it opens. Memory is
bounded: `window_secs / period_secs` samples of one number pair per worker.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any

from picker.observe.metrics import PickerMetrics

__all__ = ["ActivityHistory"]

# (monotonic time, worker id -> (decisions, prefix hits) since start)
_Sample = tuple[float, dict[str, tuple[float, float]]]


class ActivityHistory:
    def __init__(self, metrics: PickerMetrics, period_secs: float = 5.0,
                 window_secs: float = 600.0) -> None:
        self._metrics = metrics
        self.period_secs = period_secs
        self._samples: deque[_Sample] = deque(maxlen=int(window_secs / period_secs) + 1)

    def sample(self, now: float | None = None) -> None:
        decisions = self._metrics.by_worker("llm_picker_decisions")
        hits = self._metrics.by_worker("llm_picker_prefix_hits")
        self._samples.append((time.monotonic() if now is None else now,
                              {w: (n, hits.get(w, 0.0)) for w, n in decisions.items()}))

    def view(self, workers: list[str], now: float | None = None) -> dict[str, Any]:
        """Per interval between samples: each worker's requests per second and prefix hit
        rate (hits / decisions; None in an interval without decisions). `ages_secs` is how long
        ago each interval ended."""
        now = time.monotonic() if now is None else now
        samples = list(self._samples)
        pairs = list(zip(samples, samples[1:], strict=False))
        series: dict[str, dict[str, list[float | None]]] = {}
        for worker in workers:
            rates: list[float | None] = []
            hit_rates: list[float | None] = []
            for (t0, before), (t1, after) in pairs:
                n0, h0 = before.get(worker, (0.0, 0.0))
                n1, h1 = after.get(worker, (0.0, 0.0))
                done = n1 - n0
                rates.append(round(done / (t1 - t0), 3) if t1 > t0 else 0.0)
                hit_rates.append(round((h1 - h0) / done, 3) if done > 0 else None)
            series[worker] = {"rate": rates, "hit_rate": hit_rates}
        return {"period_secs": self.period_secs,
                "ages_secs": [round(now - t1, 1) for _, (t1, _) in pairs],
                "workers": series}

    async def run(self) -> None:
        """Sample forever (cancelled by the runtime at stop)."""
        while True:
            self.sample()
            await asyncio.sleep(self.period_secs)
