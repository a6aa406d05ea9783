"""In-process decision latency: the runtime's route with prefix hashing, 8 workers, 8k prompts."""

from __future__ import annotations

import random
import statistics
import time

from picker.config import load_config
from picker.request import Api, RoutingRequest
from picker.runtime import PickerRuntime

__all__ = ["decision_latency"]


def decision_latency(policy: str, workers: int = 8, prompt_chars: int = 8192,
                     picks: int = 5000, seed: int = 0, explain: bool = False
                     ) -> tuple[float, float]:
    """(p50, p99) in microseconds of PickerRuntime.route_sync + release over a shared-prefix
    mix; `explain` records every decision (explain.enabled; the header is not asked for)."""
    rng = random.Random(seed)
    config = load_config(overrides={
        "policy.name": policy, "prefix.enabled": True, "explain.enabled": explain,
        "workers": [{"url": f"10.0.0.{i}:8000", "id": f"w{i}", "models": ["m"]}
                    for i in range(workers)]})
    runtime = PickerRuntime(config)  # not started: the decision needs no background service
    systems = ["".join(rng.choices("abcdefghij ", k=prompt_chars - 200)) for _ in range(32)]
    requests = [RoutingRequest(model="m", api=Api.CHAT,
                               prompt_text=rng.choice(systems) + f"question {i} " * 20)
                for i in range(picks)]
    timings = []
    for request in requests:
        started = time.perf_counter()
        lease = runtime.route_sync(request)
        timings.append(time.perf_counter() - started)
        lease.release("completed")
    cuts = statistics.quantiles(timings, n=100)
    return cuts[49] * 1e6, cuts[98] * 1e6
