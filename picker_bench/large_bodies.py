"""`llm-picker bench large-bodies`: picker memory under multi-megabyte request bodies (issue 30).

Envoy + picker + one simulated engine per body mode; `requests` chat completions of 3-8 MB
(random sizes, fixed seed), `concurrency` at a time. Prints the picker's VmRSS idle, at its
peak, over each third of the run, and at the end: a leak keeps climbing third after third, an
allocator high-water mark levels off. tests/integration/test_large_bodies.py runs a smaller
load through the same function.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import httpx

from picker_bench.stack import SimSpec, local_fleet

__all__ = ["BODY_MODES", "rss_mb", "run_large_bodies", "send_large_bodies"]

MODEL = "sim-model"
MB = 1024 * 1024
BODY_MODES = ("BUFFERED", "FULL_DUPLEX_STREAMED")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


async def send_large_bodies(url: str, pid: int, requests: int,
                            concurrency: int) -> list[float]:
    """The picker's RSS (MB) after each request, in completion order; every request must be
    answered 200."""
    sizes = random.Random(30)
    gate = asyncio.Semaphore(concurrency)
    samples: list[float] = []
    async with httpx.AsyncClient(timeout=60) as client:
        async def one(i: int) -> None:
            size = sizes.randrange(3 * MB, 8 * MB - 4096)  # under the 8 MiB body limit
            content = (f"w{i} " * (size // 3 + 1))[:size]
            async with gate:
                response = await client.post(f"{url}/v1/chat/completions", json={
                    "model": MODEL, "max_tokens": 1,
                    "messages": [{"role": "user", "content": content}]})
            if response.status_code != 200:
                raise RuntimeError(f"request {i}: {response.status_code} {response.text[:300]}")
            samples.append(rss_mb(pid))

        await asyncio.gather(*(one(i) for i in range(requests)))
    return samples


def run_large_bodies(requests: int = 120, concurrency: int = 2) -> int:
    print(f"{requests} requests of 3-8 MB, {concurrency} at a time; picker VmRSS in MB")
    print(f"{'body mode':22} {'idle':>6} {'peak':>6} {'1st third':>10} {'2nd third':>10} "
          f"{'3rd third':>10} {'end':>6}")
    for mode in BODY_MODES:
        sim = SimSpec("a", MODEL, ["--ttft-ms", "1", "--tpot-ms", "1"])
        with local_fleet([sim], body_mode=mode) as fleet:
            pid = fleet.processes["picker"].popen.pid
            idle = rss_mb(pid)
            samples = asyncio.run(send_large_bodies(fleet.envoy_url, pid, requests,
                                                    concurrency))
        third = len(samples) // 3
        peaks = [max(samples[:third]), max(samples[third:-third]), max(samples[-third:])]
        print(f"{mode:22} {idle:6.0f} {max(samples):6.0f} "
              + " ".join(f"{p:10.0f}" for p in peaks) + f" {samples[-1]:6.0f}")
    return 0
