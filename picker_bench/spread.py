"""`llm-picker bench spread`: does a least_load burst spread as evenly over the engines with
`serve --workers N` as with one process?

4 simulated engines behind Envoy + picker (least_load, BUFFERED), a burst of short chat
requests at a fixed concurrency, once per process count. Each process sees only the streams
Envoy gave it; only the shared in-flight table lets its picks account for the others'. Reported
per run: requests per engine (from the engines' own header), max/min of those, the largest gap
between the busiest and idlest engine's in-flight count sampled from /metrics during the burst,
and requests per second.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter

import httpx

from picker_bench.stack import Fleet, SimSpec, local_fleet

__all__ = ["run_spread"]

MODEL = "spread-model"
ENGINES = 4
SIM_HEADER = "x-picker-sim-worker"
_SIM = ["--ttft-ms", "20", "--tpot-ms", "5"]


async def _burst(fleet: Fleet, requests: int,
                 concurrency: int) -> tuple[Counter[str], Counter[str]]:
    """Requests served per engine, and failures by status and body."""
    served: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    todo = iter(range(requests))
    body = {"model": MODEL, "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}

    async def worker(client: httpx.AsyncClient) -> None:
        for _ in todo:
            response = await client.post("/v1/chat/completions", json=body)
            if response.status_code == 200:
                served[response.headers[SIM_HEADER]] += 1
            else:
                errors[f"{response.status_code} {response.text[:200]}"] += 1

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=fleet.envoy_url, timeout=30, limits=limits) as client:
        await asyncio.wait_for(asyncio.gather(*(worker(client) for _ in range(concurrency))),
                               600)
    return served, errors


def _in_flight_gaps(fleet: Fleet, stop: threading.Event, gaps: list[float]) -> None:
    with httpx.Client(timeout=5) as client:
        while not stop.is_set():
            counts = [float(line.rsplit(" ", 1)[1]) for line in
                      client.get(f"{fleet.admin_url}/metrics").text.splitlines()
                      if line.startswith("llm_picker_worker_in_flight{")]
            if counts:
                gaps.append(max(counts) - min(counts))
            time.sleep(0.05)


def run_spread(requests: int = 2000, concurrency: int = 32,
               processes: list[int] | None = None) -> int:
    print(f"least_load, {ENGINES} engines, {requests} requests at concurrency {concurrency}")
    print(f"{'processes':>9}  {'requests per engine':<24}{'max/min':>8}"
          f"{'in-flight gap p50/max':>23}{'req/s':>8}{'errors':>7}")
    failed = 0
    for count in processes or [1, 2]:
        sims = [SimSpec(f"sim-{i}", MODEL, _SIM) for i in range(ENGINES)]
        with local_fleet(sims, policy="least_load", processes=count,
                         picker_settings={"health": {"enabled": False}}) as fleet:
            gaps: list[float] = []
            stop = threading.Event()
            sampler = threading.Thread(target=_in_flight_gaps, args=(fleet, stop, gaps))
            started = time.perf_counter()
            sampler.start()
            try:
                served, errors = asyncio.run(_burst(fleet, requests, concurrency))
            finally:
                stop.set()
                sampler.join()
            elapsed = time.perf_counter() - started
        per_engine = [served[f"sim-{i}"] for i in range(ENGINES)]
        gaps.sort()
        gap = f"{gaps[len(gaps) // 2]:.0f}/{gaps[-1]:.0f}" if gaps else "-"
        ratio = f"{max(per_engine) / max(min(per_engine), 1):.2f}x"
        print(f"{count:>9}  {'/'.join(map(str, per_engine)):<24}{ratio:>8}{gap:>23}"
              f"{sum(per_engine) / elapsed:>8.0f}{sum(errors.values()):>7}")
        for error, times in errors.items():
            print(f"           {times} x {error}")
        failed += sum(errors.values())
    return 0 if failed == 0 else 1
