"""`llm-picker bench lora`: many LoRA adapters on a small fleet, LoRA affinity against
adapter-blind policies, in one run.

4 simulated vLLM engines (picker_sim.lora), each with every adapter registered, `max_loras`
adapters per batch (a request on another adapter waits until one leaves the batch) and a cost
for copying an adapter not in a GPU slot in (`--load-ms`). Requests pick their adapter with
Zipf popularity (a few adapters take most traffic, the tail is long), and are streamed through
Envoy + picker at a fixed concurrency; each policy gets fresh engines (empty GPU slots) and the
same request sequence. Reported per policy: time to first token p50/p99 (client side, through
Envoy), adapter loads (copies into a GPU slot, summed over the engines), requests per second,
errors, and TTFT and loads as ratios to least_load in the same run.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass

import httpx

from picker_bench.loopback import loopback
from picker_bench.stack import Fleet, SimSpec, local_fleet

__all__ = ["run_lora"]

MODEL = "lora-base"
POLICIES = ("lora_affinity", "weighted", "least_load", "round_robin")
# weighted here: llm-d's profile shape, LoRA affinity weighed against load.
_WEIGHTED = {"scorers": {"lora": 1.0, "in_flight": 1.0}}


@dataclass(frozen=True, slots=True)
class Result:
    policy: str
    ttft: list[float]
    loads: int
    secs: float
    errors: int

    def quantile(self, q: float) -> float:
        ordered = sorted(self.ttft)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def zipf_sequence(adapters: int, requests: int, s: float, seed: int) -> list[str]:
    """Adapter names drawn with P(rank k) proportional to 1/k^s."""
    names = [f"adapter-{k:02d}" for k in range(adapters)]
    weights = [1.0 / (k + 1) ** s for k in range(adapters)]
    return random.Random(seed).choices(names, weights, k=requests)


async def _drive(fleet: Fleet, sequence: Sequence[str], concurrency: int,
                 max_tokens: int) -> tuple[list[float], int]:
    """Stream every request; time to the first token of each, and failures."""
    ttft: list[float] = []
    errors = 0
    todo = iter(sequence)

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal errors
        for adapter in todo:
            body = {"model": adapter, "max_tokens": max_tokens, "stream": True,
                    "messages": [{"role": "user", "content": f"task for {adapter}"}]}
            started = time.perf_counter()
            first = None
            async with client.stream("POST", "/v1/chat/completions", json=body) as response:
                if response.status_code != 200:
                    errors += 1
                    await response.aread()
                    continue
                async for line in response.aiter_lines():
                    if first is None and line.startswith("data: {"):
                        first = time.perf_counter() - started
            if first is None:
                errors += 1
            else:
                ttft.append(first)

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=fleet.envoy_url, timeout=120, limits=limits) as client:
        await asyncio.wait_for(asyncio.gather(*(worker(client) for _ in range(concurrency))),
                               1800)
    return ttft, errors


def _one(policy: str, sims: list[SimSpec], sequence: Sequence[str], concurrency: int,
         max_tokens: int) -> Result:
    settings = {"health": {"enabled": False}, "load": {"interval_secs": 0.05},
                "policies": {"weighted": _WEIGHTED}}
    with local_fleet(sims, policy=policy, picker_settings=settings) as fleet:
        started = time.perf_counter()
        ttft, errors = asyncio.run(_drive(fleet, sequence, concurrency, max_tokens))
        secs = time.perf_counter() - started
        loads = sum(loopback().get(f"{fleet.sim_url(s.worker_id)}/sim/stats").json()["lora_loads"]
                    for s in sims)
    return Result(policy, ttft, loads, secs, errors)


def run_lora(adapters: int = 40, engines: int = 4, max_loras: int = 4, requests: int = 1200,
             concurrency: int = 32, zipf_s: float = 1.0, load_ms: float = 50.0,
             max_tokens: int = 16, seed: int = 7,
             policies: Sequence[str] | None = None) -> int:
    policies = policies or POLICIES
    sequence = zipf_sequence(adapters, requests, zipf_s, seed)
    names = sorted(set(f"adapter-{k:02d}" for k in range(adapters)))
    sims = [SimSpec(f"e{i}", MODEL, [
        "--ttft-ms", "5", "--tpot-ms", "5", "--max-concurrency", "32",
        "--max-loras", str(max_loras), "--lora-load-ms", str(load_ms),
        "--lora-modules", *names], worker={"adapters": dict.fromkeys(names, MODEL)})
        for i in range(engines)]
    top = sequence.count("adapter-00") / len(sequence)
    print(f"{adapters} adapters (Zipf s={zipf_s}: the top one {top:.0%} of requests) on "
          f"{engines} engines, max_loras {max_loras}, adapter load {load_ms:g} ms; {requests} "
          f"streamed requests at concurrency {concurrency}, {max_tokens} tokens each")
    print(f"{'policy':<15}{'TTFT p50 ms':>12}{'p99 ms':>9}{'loads':>7}{'req/s':>8}"
          f"{'errors':>7}{'p50 / least_load':>18}{'p99 /':>7}{'loads /':>9}")
    results = [_one(p, sims, sequence, concurrency, max_tokens) for p in policies]
    base = next((r for r in results if r.policy == "least_load"), results[0])
    for r in results:
        print(f"{r.policy:<15}{r.quantile(0.5) * 1000:>12.1f}{r.quantile(0.99) * 1000:>9.1f}"
              f"{r.loads:>7}{len(r.ttft) / r.secs:>8.1f}{r.errors:>7}"
              f"{r.quantile(0.5) / base.quantile(0.5):>17.2f}x"
              f"{r.quantile(0.99) / base.quantile(0.99):>6.2f}x"
              f"{r.loads / max(base.loads, 1):>8.2f}x")
    return 0 if all(r.errors == 0 for r in results) else 1
