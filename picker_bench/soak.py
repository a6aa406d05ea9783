"""`llm-picker bench soak --minutes N`: steady streaming load with engines and the picker dying.

Envoy (fail-open config) + picker + 3 simulated engines. Every `kill_every` seconds one engine
is killed and restarted 5 s later on the same port; at half time the picker is SIGKILLed and
restarted. Reports requests by outcome and cause, picker memory (RSS after warm-up and at the
end), and whether every counter is back to zero once the load stops.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from pathlib import Path

import httpx
import yaml

from picker_bench.loopback import loopback
from picker_bench.stack import ENVOY_FAIL_OPEN, Fleet, SimSpec, local_fleet, start_picker, start_sim

__all__ = ["run_soak"]

MODEL = "sim-model"
BODY = {"model": MODEL, "messages": [{"role": "user", "content": "soak"}], "max_tokens": 20,
        "stream": True}


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def _user(client: httpx.AsyncClient, deadline: float, outcomes: Counter[str]) -> None:
    while time.monotonic() < deadline:
        try:
            async with client.stream("POST", "/v1/chat/completions", json=BODY) as response:
                done = False
                async for line in response.aiter_lines():
                    done = done or line == "data: [DONE]"
                outcomes["ok" if response.status_code == 200 and done
                         else f"http_{response.status_code}" if response.status_code != 200
                         else "truncated_stream"] += 1
        except httpx.HTTPError as exc:
            outcomes[type(exc).__name__] += 1
            await asyncio.sleep(0.05)


async def _sample_later(fleet: Fleet, rss: dict[str, int], key: str, delay: float) -> None:
    await asyncio.sleep(delay)
    rss[key] = _rss_kib(fleet.processes["picker"].popen.pid)


async def _chaos(fleet: Fleet, seconds: float, kill_every: float, log: list[str],
                 rss: dict[str, int]) -> None:
    started = time.monotonic()
    picker_restarted = False
    for victim in itertools.cycle(sorted(fleet.sims)):
        if time.monotonic() - started + kill_every + 6 > seconds:
            return  # no time left to kill and restart before the load stops
        await asyncio.sleep(kill_every)
        elapsed = time.monotonic() - started
        fleet.processes[f"sim-{victim}"].kill()
        log.append(f"{elapsed:6.0f}s killed engine {victim}")
        await asyncio.sleep(5)
        fleet.processes[f"sim-{victim}"] = await asyncio.to_thread(
            start_sim, fleet.sims[victim], fleet.workdir)
        log.append(f"{time.monotonic() - started:6.0f}s restarted engine {victim}")
        if not picker_restarted and time.monotonic() - started > seconds / 2:
            picker_restarted = True
            rss["first_before_kill"] = _rss_kib(fleet.processes["picker"].popen.pid)
            fleet.processes["picker"].kill()
            log.append(f"{time.monotonic() - started:6.0f}s killed the picker")
            config = yaml.safe_load((fleet.workdir / "picker.yaml").read_text())
            fleet.processes["picker"] = await asyncio.to_thread(start_picker, config,
                                                                fleet.workdir)
            log.append(f"{time.monotonic() - started:6.0f}s restarted the picker")
            asyncio.create_task(_sample_later(fleet, rss, "second_after_warmup", 30.0))


async def _run(fleet: Fleet, seconds: float, users: int, kill_every: float | None,
               log: list[str], rss: dict[str, int]) -> Counter[str]:
    outcomes: Counter[str] = Counter()
    deadline = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=users * 2)
    async with httpx.AsyncClient(base_url=fleet.envoy_url, timeout=30, limits=limits) as client:
        chaos = [] if kill_every is None else [_chaos(fleet, seconds, kill_every, log, rss)]
        await asyncio.gather(*chaos, *(_user(client, deadline, outcomes) for _ in range(users)))
    return outcomes


def run_soak(minutes: float = 10.0, users: int = 8, kill_every: float = 60.0) -> int:
    sims = [SimSpec(w, MODEL, ["--ttft-ms", "10", "--tpot-ms", "5"]) for w in ("a", "b", "c")]
    settings = {"health": {"interval_secs": 0.5, "failure_threshold": 1, "success_threshold": 1}}
    log: list[str] = []
    with local_fleet(sims, policy="least_load", picker_settings=settings,
                     envoy_template=ENVOY_FAIL_OPEN) as fleet:
        rss: dict[str, int] = {}
        warm = asyncio.run(_run(fleet, 20.0, users, None, log, rss))
        rss["first_after_warmup"] = _rss_kib(fleet.processes["picker"].popen.pid)
        outcomes = asyncio.run(_run(fleet, minutes * 60, users, kill_every, log, rss))
        time.sleep(2)
        rss["end"] = _rss_kib(fleet.processes["picker"].popen.pid)
        metrics = loopback().get(f"{fleet.admin_url}/metrics", timeout=5).text
        health = loopback().get(f"{fleet.admin_url}/health", timeout=5).json()
    in_flight = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                    if line.startswith("llm_picker_worker_in_flight{"))
    total = sum(outcomes.values())
    print("\n".join(log))
    print(f"\nsoak: {minutes:.0f} min, {users} streaming users, warm-up {sum(warm.values())} "
          f"requests")
    print(f"requests: {total}, ok {outcomes['ok']} ({outcomes['ok'] / max(total, 1):.3%})")
    for cause, count in sorted(outcomes.items()):
        if cause != "ok":
            print(f"  failed: {cause}: {count}")
    print("picker RSS (KiB): " + ", ".join(f"{k} {v}" for k, v in rss.items()))
    for first, last in (("first_after_warmup", "first_before_kill"),
                        ("second_after_warmup", "end"), ("first_after_warmup", "end")):
        if first in rss and last in rss:
            print(f"  growth {first} -> {last}: {(rss[last] - rss[first]) / rss[first]:+.1%}")
    print(f"at the end: in-flight {in_flight:.0f}, active {health['active_requests']}")
    leaked = in_flight != 0 or health["active_requests"] != 0
    return 1 if leaked else 0
