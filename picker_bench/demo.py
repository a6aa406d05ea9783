"""`llm-picker demo`: a real Envoy routing OpenAI traffic through the picker to three sims.

Sends chat completions (every fourth one streamed) plus a few requests the picker must refuse,
then prints who served what and what the picker decided. Exits non-zero if any request that
should have succeeded did not, so `make demo` doubles as a smoke test.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from picker.policies import parse_params
from picker_bench.loopback import loopback
from picker_bench.stack import Fleet, SimSpec, local_fleet

__all__ = ["demo_settings", "run_demo"]

SIM_HEADER = "x-picker-sim-worker"
MODEL = "sim-model"
CONCURRENCY = 16
# One engine is slow: load-aware policies should send it less.
SIMS = (
    SimSpec("sim-a", MODEL, ["--ttft-ms", "20", "--tpot-ms", "2"]),
    SimSpec("sim-b", MODEL, ["--ttft-ms", "20", "--tpot-ms", "2"]),
    SimSpec("sim-c", MODEL, ["--ttft-ms", "150", "--tpot-ms", "10"]),
)


@dataclass
class Outcome:
    worker: str
    status: int
    streamed: bool
    seconds: float


async def _one(client: httpx.AsyncClient, i: int, model: str) -> Outcome:
    stream = i % 4 == 0
    body = {
        "model": model,
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": f"Question {i}: what is {i} + {i}?"},
        ],
        "max_tokens": 8,
        "stream": stream,
    }
    started = time.perf_counter()
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        async for _ in response.aiter_bytes():
            pass
    worker = response.headers.get(SIM_HEADER, "-")
    return Outcome(worker, response.status_code, stream, time.perf_counter() - started)


async def _drive(base_url: str, requests: int) -> list[Outcome]:
    gate = asyncio.Semaphore(CONCURRENCY)

    async def guarded(i: int, model: str) -> Outcome:
        async with gate:
            return await _one(client, i, model)

    async with httpx.AsyncClient(base_url=base_url, timeout=30.0) as client:
        jobs = [guarded(i, MODEL) for i in range(requests)]
        # Requests the picker must refuse: a model no worker serves.
        jobs += [guarded(i, "no-such-model") for i in range(3)]
        return list(await asyncio.gather(*jobs))


def _decisions(fleet: Fleet) -> Counter[str]:
    text = loopback().get(f"{fleet.admin_url}/metrics", timeout=5.0).text
    counts: Counter[str] = Counter()
    for family in text_string_to_metric_families(text):
        if family.name == "llm_picker_decisions":
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    counts[f"{sample.labels['policy']} -> {sample.labels['worker']}"] += int(
                        sample.value
                    )
    return counts


def demo_settings(policy: str) -> dict[str, Any]:
    """What `policy` reads, switched on: the demo takes no config file, so a policy that reads
    the prefix index (prefix_cache, cache_aware, weighted profiles with a prefix scorer) would
    otherwise be refused for want of `prefix.enabled`. Raises ConfigError for an unknown name."""
    params = parse_params(policy, None)
    settings: dict[str, Any] = {}
    if params.needs_prefix():
        settings["prefix"] = {"enabled": True}
    if params.engine_signals():
        settings["load"] = {"enabled": True}
    return settings


def run_demo(requests: int = 200, policy: str = "least_load",
             body_mode: str = "BUFFERED") -> int:
    settings = demo_settings(policy)
    switched = ", ".join(f"{section}.enabled" for section in settings)
    print(f"starting 3 simulated engines, llm-picker ({policy}"
          f"{f'; {switched}' if switched else ''}) and Envoy ({body_mode}) ...")
    with local_fleet(SIMS, policy=policy, body_mode=body_mode,
                     picker_settings=settings) as fleet:
        started = time.perf_counter()
        outcomes = asyncio.run(_drive(fleet.envoy_url, requests))
        elapsed = time.perf_counter() - started
        decisions = _decisions(fleet)

    good = outcomes[:requests]
    refused = outcomes[requests:]
    print(f"\n{len(outcomes)} requests through Envoy in {elapsed:.1f}s "
          f"({sum(o.streamed for o in good)} streamed)\n")
    print(f"{'worker':<10}{'served':>8}{'errors':>8}{'mean latency':>15}")
    for worker in sorted({o.worker for o in good}):
        mine = [o for o in good if o.worker == worker]
        errors = sum(o.status != 200 for o in mine)
        mean_ms = 1000 * sum(o.seconds for o in mine) / len(mine)
        print(f"{worker:<10}{len(mine):>8}{errors:>8}{mean_ms:>12.0f} ms")
    by_status = Counter(o.status for o in refused)
    statuses = ", ".join(f"{n} x {status}" for status, n in by_status.items())
    print(f"\nrefused by the picker (model nobody serves, expected 404): {statuses}")
    print("\npicker decisions (from its /metrics):")
    for key, count in sorted(decisions.items()):
        print(f"  {key:<30}{count:>6}")

    failed = sum(o.status != 200 for o in good) + sum(o.status != 404 for o in refused)
    print("\nOK" if not failed else f"\nFAILED: {failed} unexpected responses")
    return 0 if not failed else 1
