"""`llm-picker bench quota-drift`: how far a flow's quota drifts when replicas each enforce it.

One simulated engine behind Envoy and R picker replicas (Envoy's ext_proc cluster lists them
all, round robin), one flow with a budget of `budget` requests per minute, offered 3x that
budget evenly over `seconds` (at most a minute, so no spending leaves the window). Phases, each
with fresh pickers: one picker (the baseline), R replicas each enforcing the whole budget
(`flow.replica_share: 1`, the default), and R replicas each enforcing 1/R of it. Reported per
phase: requests admitted, admitted / budget, and refusals by status and code.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import httpx

from picker_bench.stack import (
    SimSpec,
    free_port,
    render_envoy_config,
    replica_configs,
    start_envoy,
    start_picker,
    start_sims,
)

__all__ = ["run_quota_drift"]

MODEL = "quota-model"
FLOW = "tenant"
OFFERED = 3  # times the budget


async def _offer(url: str, requests: int, seconds: float) -> Counter[str]:
    """`requests` evenly over `seconds`, one at a time; outcomes by status and code."""
    outcomes: Counter[str] = Counter()
    body = {"model": MODEL, "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]}
    start = time.monotonic()
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        for i in range(requests):
            await asyncio.sleep(max(0.0, start + i * seconds / requests - time.monotonic()))
            response = await client.post("/v1/chat/completions", json=body,
                                         headers={"x-gateway-inference-fairness-id": FLOW})
            if response.status_code == 200:
                outcomes["admitted"] += 1
            else:
                code = response.json().get("error", {}).get("code")
                outcomes[f"{response.status_code} {code}"] += 1
    return outcomes


def _phase(replicas: int, share: float, budget: int, seconds: float,
           workdir: Path) -> Counter[str]:
    with ExitStack() as stack:
        sim = SimSpec("sim-0", MODEL, ["--ttft-ms", "1", "--tpot-ms", "1"])
        for proc in start_sims([sim], workdir):
            stack.callback(proc.stop)
        config: dict[str, Any] = {
            "workers": [{"url": f"http://127.0.0.1:{sim.port}", "id": "sim-0",
                         "models": [MODEL]}],
            "flow": {"enabled": True, "trust_client_headers": True, "replica_share": share,
                     "quotas": {FLOW: {"requests_per_minute": budget}}}}
        pickers = replica_configs(config, replicas, share=False)
        for i, picker in enumerate(pickers):
            stack.callback(start_picker(picker, workdir, name=f"picker-{i}").stop)
        ports = [picker["extproc"]["port"] for picker in pickers]
        listen = free_port()
        stack.callback(start_envoy(render_envoy_config(
            listen_port=listen, admin_port=free_port(), picker_port=ports[0],
            replica_ports=ports[1:]), workdir).stop)
        return asyncio.run(_offer(f"http://127.0.0.1:{listen}", OFFERED * budget, seconds))


def run_quota_drift(replicas: int = 2, budget: int = 30, seconds: float = 30.0) -> int:
    if not 0 < seconds <= 60:
        print("llm-picker bench quota-drift: --seconds must be in (0, 60]: the budget is per "
              "rolling minute")
        return 2
    print(f"one flow, budget {budget} requests/min, offered {OFFERED * budget} over "
          f"{seconds:g} s; {replicas} replicas behind one Envoy")
    print(f"{'phase':<34}{'admitted':>9}{'admitted/B':>12}  refused")
    phases = [("1 picker", 1, 1.0), (f"{replicas} replicas, whole budget each", replicas, 1.0),
              (f"{replicas} replicas, replica_share 1/{replicas}", replicas, 1 / replicas)]
    with TemporaryDirectory(prefix="llm-picker-quota-drift-") as tmp:
        for label, count, share in phases:
            outcomes = _phase(count, share, budget, seconds, Path(tmp))
            admitted = outcomes.pop("admitted", 0)
            refused = ", ".join(f"{n} x {key}" for key, n in sorted(outcomes.items()))
            print(f"{label:<34}{admitted:>9}{admitted / budget:>12.2f}  {refused or '-'}",
                  flush=True)
    return 0
