"""`llm-picker bench flow`: a fleet offered twice its capacity, with flow control and with the
single admission queue it replaces.

Two simulated engines of `SLOTS` running slots each, behind Envoy and the picker. Three phases
of `seconds` each, in one run, each after `warmup` seconds (default 0) of the interactive band
alone, unmeasured (a steady state for batch to arrive into, instead of an empty fleet):

- alone: the interactive band by itself (priority 10, 40% of capacity, 4 tenants, one sending
  10x each of the others) - the TTFT it gets with the fleet to itself;
- flow: interactive plus a batch band (priority -1, two tenants offering 120% and 40% of
  capacity: both more than half the spare, so both stay backlogged), under flow control
  (bands, round robin between flows, the engines' slots as the saturation limit, the batch
  band leaving the interactive band the headroom its recent demand needs -
  `headroom_miss_rate`, and optionally a fixed `sheddable_share` - and a TTL; with `preempt`,
  an interactive request that finds no slot ends a running batch one, whose client then sees
  its stream reset: counted as refused, "transport");
- single: the same load under `limits:` (one concurrency limit of the engines' slots, one FIFO
  queue with the same bound and timeout) - what the picker did before flow control.

Reported per phase: interactive TTFT p50/p99 (client-observed, first streamed chunk) and its
p99 against `alone`, batch requests served per second, Jain's fairness index of the tokens
served to the batch tenants (both backlogged: they offer far more than the spare capacity),
and every request accounted for: served, or refused with a status and a reason code. Under
flow control also how many interactive requests waited for a slot (over 10 ms, over 50 ms;
the picker's wait histogram): the part of their TTFT that sharing slots with the batch band
decides, apart from the shared machine's own delays.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from picker_bench.loopback import loopback
from picker_bench.stack import SimSpec, local_fleet

__all__ = ["jain", "run_flow"]

MODEL = "flow-model"
ENGINES = 2
SLOTS = 4
OUTPUT_TOKENS = 16
TTFT_MS, TPOT_MS = 40, 20
# One request holds a slot for about TTFT + OUTPUT_TOKENS x TPOT.
SERVICE_SECS = (TTFT_MS + OUTPUT_TOKENS * TPOT_MS) / 1000
CAPACITY_RPS = ENGINES * SLOTS / SERVICE_SECS
TTL_SECS = 2.0

# (tenant, band, share of capacity offered)
INTERACTIVE = [("heavy", "interactive", 0.4 * 10 / 13)] + [
    (f"light-{i}", "interactive", 0.4 / 13) for i in range(3)]
# Both batch tenants offer more than half the spare capacity: both stay backlogged.
BATCH = [("batch-big", "batch", 1.2), ("batch-small", "batch", 0.4)]


def jain(values: Sequence[float]) -> float:
    """Jain's fairness index: 1 when all equal, 1/n when one gets everything."""
    total = sum(values)
    squares = sum(v * v for v in values)
    return total * total / (len(values) * squares) if squares else 1.0


@dataclass
class _Tally:
    ttft: dict[str, list[float]] = field(default_factory=dict)  # band -> seconds
    served: Counter[str] = field(default_factory=Counter)  # tenant -> requests
    tokens: Counter[str] = field(default_factory=Counter)  # tenant -> chunks streamed
    refused: Counter[str] = field(default_factory=Counter)  # "band status code"
    sent: int = 0


async def _one(client: httpx.AsyncClient, tenant: str, band: str, tally: _Tally,
               measured: bool) -> None:
    """`measured`: its TTFT counts (sent after the warm-up); every request is accounted for."""
    body = {"model": MODEL, "max_tokens": OUTPUT_TOKENS, "stream": True,
            "messages": [{"role": "user", "content": f"{tenant} says hi"}]}
    headers = {"x-gateway-inference-fairness-id": tenant,
               "x-gateway-inference-objective": band}
    started = time.perf_counter()
    tally.sent += 1
    try:
        async with client.stream("POST", "/v1/chat/completions", json=body,
                                 headers=headers) as response:
            if response.status_code != 200:
                text = (await response.aread()).decode(errors="replace")
                code = _error_code(text)
                retry = "retry-after" if "retry-after" in response.headers else "no-retry-after"
                tally.refused[f"{band} {response.status_code} {code} {retry}"] += 1
                return
            first = True
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                if first and measured:
                    tally.ttft.setdefault(band, []).append(time.perf_counter() - started)
                    first = False
                tally.tokens[tenant] += 1
            tally.served[tenant] += 1
    except httpx.HTTPError as exc:
        tally.refused[f"{band} transport {type(exc).__name__}"] += 1


def _error_code(text: str) -> str:
    try:
        return str(json.loads(text)["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return "unparsed"


async def _offer(url: str, tenants: Sequence[tuple[str, str, float]], seconds: float,
                 seed: int, warmup: float) -> _Tally:
    """Poisson arrivals per tenant at its share of capacity, for `seconds`, the interactive
    band also for the `warmup` seconds before (their TTFT not measured); then waits for every
    request to end.

    Each tenant draws its arrivals from its own generator, seeded by `seed` and its name: the
    interactive tenants then send the same sequence in every phase of a run, with or without
    the batch band beside them. Their bursts (a 1% tail is a few of them) are the same in the
    phases compared, rather than another draw in each."""
    tally = _Tally()
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=200)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:
        tasks: list[asyncio.Task[None]] = []

        started = time.perf_counter()
        measured_from = started + warmup
        end = measured_from + seconds

        async def arrivals(tenant: str, band: str, share: float) -> None:
            """Each arrival at its own time from the phase's start, not a gap after the
            previous wake-up: a loop slowed by a busier phase delays one request, not every
            later one."""
            rate = share * CAPACITY_RPS
            rng = random.Random(f"{seed}/{tenant}")
            due = started + (warmup if band != "interactive" else 0.0)
            while True:
                due += rng.expovariate(rate)
                if due >= end:
                    return
                await asyncio.sleep(max(0.0, due - time.perf_counter()))
                tasks.append(asyncio.create_task(
                    _one(client, tenant, band, tally, due >= measured_from)))

        await asyncio.gather(*(arrivals(*tenant) for tenant in tenants))
        await asyncio.gather(*tasks)
    return tally


def _slot_waits(admin_url: str) -> tuple[int, int, int]:
    """Interactive requests dispatched by flow control, and how many of them waited over 10 ms
    and over 50 ms for a slot (its wait histogram): the part of their TTFT the bands' sharing
    of slots decides, apart from the machine's own delays."""
    text = loopback().get(f"{admin_url}/metrics", timeout=10).text
    buckets: dict[float, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name != "llm_picker_flow_wait_seconds":
            continue
        for sample in family.samples:
            labels = sample.labels
            if (sample.name.endswith("_bucket") and labels.get("priority") == "10"
                    and labels.get("outcome") == "dispatched"):
                buckets[float(labels["le"])] = sample.value
    total = buckets.get(float("inf"), 0.0)
    return (int(total), int(total - buckets.get(0.01, total)),
            int(total - buckets.get(0.05, total)))


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def _picker_flow(sheddable_share: float, headroom_miss_rate: float,
                 preempt: bool) -> Mapping[str, Any]:
    return {"flow": {
        "enabled": True, "trust_client_headers": True,
        "objectives": {"interactive": 10, "batch": -1},
        "ttl_secs": TTL_SECS, "max_queued": 200, "preempt": preempt,
        "saturation": {"max_in_flight_per_worker": SLOTS, "sheddable_share": sheddable_share,
                       "headroom_miss_rate": headroom_miss_rate}}}


_PICKER_SINGLE: Mapping[str, Any] = {"limits": {
    "max_concurrent_requests": ENGINES * SLOTS, "queue_size": 200,
    "queue_timeout_secs": TTL_SECS}}


def run_flow(seconds: float = 15.0, seed: int = 1, sheddable_share: float = 1.0,
             headroom_miss_rate: float = 0.01, warmup: float = 0.0,
             preempt: bool = False) -> int:
    sims = [SimSpec(f"sim-{i}", MODEL, ["--ttft-ms", str(TTFT_MS), "--tpot-ms", str(TPOT_MS),
                                         "--max-concurrency", str(SLOTS)])
            for i in range(ENGINES)]
    print(f"{ENGINES} engines x {SLOTS} slots, ~{CAPACITY_RPS:.0f} req/s capacity; "
          f"{seconds:.0f} s per phase; interactive 40% (4 tenants, 10:1:1:1), batch 160% "
          f"(2 tenants, 3:1); TTL {TTL_SECS:.0f} s; batch may fill {sheddable_share:.0%} of "
          f"the slots; headroom miss rate {headroom_miss_rate:g}; {warmup:g} s warm-up"
          f"{'; batch requests preempted for interactive ones' if preempt else ''}")
    flow = _picker_flow(sheddable_share, headroom_miss_rate, preempt)
    phases = [("alone", flow, INTERACTIVE), ("flow", flow, INTERACTIVE + BATCH),
              ("single", _PICKER_SINGLE, INTERACTIVE + BATCH)]
    print(f"{'phase':<8}{'int. TTFT p50':>14}{'p99':>8}{'p99/alone':>10}{'batch req/s':>12}"
          f"{'Jain batch':>11}{'sent':>7}{'served':>8}{'refused':>8}")
    alone_p99 = float("nan")
    unaccounted = 0
    for name, settings, tenants in phases:
        with local_fleet(sims, policy="least_load",
                         picker_settings={"health": {"enabled": False}, **settings}) as fleet:
            tally = asyncio.run(_offer(fleet.envoy_url, tenants, seconds, seed, warmup))
            waits = _slot_waits(fleet.admin_url) if settings is flow else None
        ttft = tally.ttft.get("interactive", [])
        p50, p99 = _percentile(ttft, 0.5), _percentile(ttft, 0.99)
        if name == "alone":
            alone_p99 = p99
        batch_rps = sum(tally.served[t] for t, band, _ in BATCH) / seconds
        fairness = jain([tally.tokens[t] for t, _, _ in BATCH]) if name != "alone" else 1.0
        served, refused = sum(tally.served.values()), sum(tally.refused.values())
        unaccounted += tally.sent - served - refused
        print(f"{name:<8}{p50 * 1000:>12.0f}ms{p99 * 1000:>6.0f}ms{p99 / alone_p99:>9.2f}x"
              f"{batch_rps:>12.1f}{fairness:>11.3f}{tally.sent:>7}{served:>8}{refused:>8}")
        if waits is not None:
            print(f"{'':<8}interactive dispatched by flow control {waits[0]}, of which waited "
                  f"for a slot > 10 ms: {waits[1]}, > 50 ms: {waits[2]}")
        for reason, count in sorted(tally.refused.items()):
            print(f"{'':<8}refused {count} x {reason}")
    print(f"requests unaccounted for: {unaccounted}")
    return 0 if unaccounted == 0 else 1
