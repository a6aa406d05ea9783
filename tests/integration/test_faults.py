"""A worker dying under load, through the real Envoy: how many clients notice."""

from __future__ import annotations

import asyncio
import time

import httpx

from picker_bench.loopback import loopback
from picker_bench.stack import SimSpec, local_fleet
from tests.integration.conftest import MODEL, SIM_HEADER, metric_values, total_in_flight, wait_until

MESSAGES = [{"role": "user", "content": "hi"}]
FAILURE_THRESHOLD = 3
CONCURRENCY = 4


def test_killed_engine_is_ejected_by_the_circuit_breaker_within_its_threshold() -> None:
    sims = [SimSpec(f"e{i}", MODEL, ["--ttft-ms", "5", "--tpot-ms", "1"]) for i in range(3)]
    settings = {
        # Health checks far too slow to matter here: the circuit breaker must do the ejecting.
        "health": {"interval_secs": 30},
        "circuit": {"failure_threshold": FAILURE_THRESHOLD, "open_duration_secs": 30},
    }
    with local_fleet(sims, policy="round_robin", picker_settings=settings) as fleet:

        async def load(seconds: float) -> list[tuple[int, str]]:
            results: list[tuple[int, str]] = []
            deadline = time.monotonic() + seconds
            async with httpx.AsyncClient(base_url=fleet.envoy_url, timeout=10.0) as client:
                async def user() -> None:
                    while time.monotonic() < deadline and len(results) < 2000:
                        body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 2}
                        try:
                            response = await client.post("/v1/chat/completions", json=body)
                        except httpx.TransportError:
                            # Killed after its headers went out: Envoy can only reset the
                            # response. A failure the client sees, like a 503.
                            results.append((0, ""))
                            continue
                        results.append((response.status_code, response.headers.get(SIM_HEADER, "")))
                await asyncio.gather(*(user() for _ in range(CONCURRENCY)))
            return results

        async def scenario() -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
            during = asyncio.create_task(load(2.0))
            await asyncio.sleep(0.5)
            fleet.processes["sim-e1"].kill()
            first = await during
            return first, await load(1.0)

        during, after = asyncio.run(scenario())
        failures = [status for status, _ in during if status != 200]
        assert len(during) > 100
        # Each failure is one the breaker had to see, plus requests already on their way (one
        # per user at the kill, one per user picked while the failures were being reported).
        assert 1 <= len(failures) <= FAILURE_THRESHOLD + 2 * CONCURRENCY, failures
        assert all(status == 200 for status, _ in after)
        assert {worker for _, worker in after} == {"e0", "e2"}
        upstream_errors = metric_values(fleet, "llm_picker_requests_total")[
            (("outcome", "upstream_error"),)]
        assert 1 <= upstream_errors <= len(failures)  # the picker saw (most of) them
        wait_until(lambda: total_in_flight(fleet) == 0, what="in-flight back to 0")


def test_engine_killed_mid_stream_fails_that_stream_only() -> None:
    sims = [SimSpec(w, MODEL, ["--ttft-ms", "5", "--tpot-ms", "50"]) for w in ("x", "y")]
    settings = {"health": {"interval_secs": 0.1, "timeout_secs": 0.5, "failure_threshold": 1,
                           "success_threshold": 1}}
    with local_fleet(sims, policy="round_robin", picker_settings=settings) as fleet:

        async def scenario() -> tuple[bool, list[str]]:
            async with httpx.AsyncClient(base_url=fleet.envoy_url, timeout=10) as client:
                body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 100, "stream": True}
                broke = False
                async with client.stream("POST", "/v1/chat/completions", json=body) as response:
                    victim = response.headers[SIM_HEADER]
                    lines = response.aiter_lines()
                    await anext(lines)
                    fleet.processes[f"sim-{victim}"].kill()
                    try:
                        async for line in lines:
                            if line == "data: [DONE]":
                                break
                        else:
                            broke = True  # ended without [DONE]
                    except httpx.HTTPError:
                        broke = True
                await asyncio.sleep(0.5)  # one health interval and then some
                after = []
                for _ in range(6):
                    reply = await client.post("/v1/chat/completions", json={
                        "model": MODEL, "messages": MESSAGES, "max_tokens": 1})
                    assert reply.status_code == 200
                    after.append(reply.headers[SIM_HEADER])
                return broke, [victim, *after]

        broke, (victim, *after) = asyncio.run(scenario())
        assert broke
        assert victim not in after
        wait_until(lambda: total_in_flight(fleet) == 0, what="in-flight back to 0")


def test_engine_that_never_answers_is_bounded_by_timeouts() -> None:
    sims = [SimSpec("hang", MODEL, ["--ttft-ms", "60000"])]
    settings = {"health": {"interval_secs": 30}, "limits": {"timeout_secs": 2}}
    with local_fleet(sims, picker_settings=settings, route_timeout="1s") as fleet:
        started = time.monotonic()
        response = loopback().post(f"{fleet.envoy_url}/v1/chat/completions",
                                   json={"model": MODEL, "messages": MESSAGES}, timeout=30)
        assert response.status_code == 504  # Envoy's route timeout
        assert time.monotonic() - started < 5
        wait_until(lambda: total_in_flight(fleet) == 0, timeout=5, what="slot released")
