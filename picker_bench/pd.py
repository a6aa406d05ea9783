"""`llm-picker bench routing --pd`: the same fleet size split into prefill and decode roles.

Four simulated engines ("8b-h100-batched": 8b-h100-like's prefill 20,000 tokens/s and decode
steps of 6 ms plus 0.1 ms per running request, 32 running at most, with vLLM's per-step token
budget, so a prefill chunk shares - and slows - the step of every running decode) serve each
layout - 4 regular, 1 prefill + 3
decode, 2 prefill + 2 decode (vLLM NIXL two-step) - behind the real Envoy and `llm-picker
serve`, on a prefill-heavy workload (long prompts, 4 output tokens) and a decode-heavy one
(short prompts, 64 output tokens), with open-loop arrivals. TTFT is the time to the first
streamed token, TPOT the mean gap between the following ones.

What the simulator does not model: the KV transfer between the pair (free here), and the
prefill request's own HTTP round trip inside the picker is real.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from dataclasses import dataclass
from typing import Any

import httpx

from picker_bench.stack import SimSpec, free_port, local_fleet

__all__ = ["run_pd"]

MODEL = "pd-model"
PROFILE = "8b-h100-batched"
LAYOUTS = {"4 regular": (0, 0), "1P+3D": (1, 3), "2P+2D": (2, 2)}
WORKLOADS = {"prefill-heavy": (2_000, 4), "decode-heavy": (50, 64)}  # prompt words, outputs


@dataclass
class Sample:
    ttft: float
    tpot: float | None
    ok: bool


def _fleet(prefills: int, decodes: int) -> list[SimSpec]:
    base = ["--profile", PROFILE]
    if not prefills:
        return [SimSpec(f"r{i}", MODEL, base) for i in range(4)]
    specs = []
    for i in range(prefills):
        port = free_port()
        specs.append(SimSpec(f"p{i}", MODEL, [*base, "--role", "prefill", "--pd-protocol",
                                              "nixl"], port=port,
                             worker={"worker_type": "prefill", "runtime_type": "vllm"}))
    specs += [SimSpec(f"d{i}", MODEL, [*base, "--role", "decode", "--pd-protocol", "nixl"],
                      worker={"worker_type": "decode", "runtime_type": "vllm"})
              for i in range(decodes)]
    return specs


async def _one(client: httpx.AsyncClient, prompt: str, max_tokens: int) -> Sample:
    started = time.perf_counter()
    stamps: list[float] = []
    try:
        async with client.stream("POST", "/v1/completions", json={
                "model": MODEL, "prompt": prompt, "max_tokens": max_tokens,
                "stream": True}) as response:
            if response.status_code != 200:
                return Sample(0.0, None, False)
            async for line in response.aiter_lines():
                if line.startswith("data: {") and '"text": "' in line and '"text": ""' not in line:
                    stamps.append(time.perf_counter())
    except httpx.HTTPError:
        return Sample(0.0, None, False)
    if not stamps:
        return Sample(0.0, None, False)
    tpot = (stamps[-1] - stamps[0]) / (len(stamps) - 1) if len(stamps) > 1 else None
    return Sample(stamps[0] - started, tpot, True)


async def _drive(url: str, words: int, max_tokens: int, rate: float,
                 requests: int, seed: int) -> list[Sample]:
    rng = random.Random(seed)
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        tasks = []
        for i in range(requests):
            prompt = " ".join(f"w{rng.randrange(50_000)}" for _ in range(words)) + f" q{i}"
            tasks.append(asyncio.create_task(_one(client, prompt, max_tokens)))
            await asyncio.sleep(rng.expovariate(rate))
        return list(await asyncio.gather(*tasks))


def _quantile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100)[q - 1] if len(values) > 1 else values[0]


def run_pd(requests: int = 200, rate: float = 20.0, seed: int = 0) -> int:
    """Print TTFT and TPOT p50/p99 per layout and workload; returns the exit code."""
    rows: list[tuple[str, str, dict[str, Any]]] = []
    for workload, (words, max_tokens) in WORKLOADS.items():
        for layout, (prefills, decodes) in LAYOUTS.items():
            settings: dict[str, Any] = {"enable_igw": True} if prefills else {}
            with local_fleet(_fleet(prefills, decodes), policy="least_load",
                             picker_settings=settings) as fleet:
                samples = asyncio.run(_drive(fleet.envoy_url, words, max_tokens, rate,
                                             requests, seed))
            ok = [s for s in samples if s.ok]
            ttft = [s.ttft * 1000 for s in ok]
            tpot = [s.tpot * 1000 for s in ok if s.tpot is not None]
            rows.append((workload, layout, {
                "ok": f"{len(ok)}/{len(samples)}",
                "ttft_p50": _quantile(ttft, 50) if ttft else float("nan"),
                "ttft_p99": _quantile(ttft, 99) if ttft else float("nan"),
                "tpot_p50": _quantile(tpot, 50) if tpot else float("nan"),
                "tpot_p99": _quantile(tpot, 99) if tpot else float("nan")}))
            print(f"{workload:14} {layout:10} done", flush=True)
    print(f"\n{requests} streaming /v1/completions per run, Poisson arrivals at {rate}/s, "
          f"engines '{PROFILE}', picker least_load (regular) / PD defaults")
    print(f"{'workload':14} {'layout':10} {'ok':>9} {'TTFT p50':>9} {'TTFT p99':>9} "
          f"{'TPOT p50':>9} {'TPOT p99':>9}   (ms)")
    for workload, layout, r in rows:
        print(f"{workload:14} {layout:10} {r['ok']:>9} {r['ttft_p50']:9.1f} "
              f"{r['ttft_p99']:9.1f} {r['tpot_p50']:9.2f} {r['tpot_p99']:9.2f}")
    return 0
