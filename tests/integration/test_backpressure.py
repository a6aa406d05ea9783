"""Backpressure and shutdown through the real Envoy: 429s, the waiting queue, SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import time

import httpx

from picker_bench.loopback import loopback
from picker_bench.stack import SimSpec, local_fleet
from tests.integration.conftest import FAST_HEALTH, MODEL, total_in_flight, wait_until

SLOW = ["--ttft-ms", "400", "--tpot-ms", "1"]
BODY = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}


async def burst(url: str, n: int) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        return list(await asyncio.gather(
            *(client.post("/v1/chat/completions", json=BODY) for _ in range(n))))


def test_over_the_limit_is_429_with_retry_after_and_counted() -> None:
    settings = {**FAST_HEALTH, "limits": {"max_concurrent_requests": 2, "retry_after_secs": 2}}
    with local_fleet([SimSpec("a", MODEL, SLOW)], picker_settings=settings) as fleet:
        responses = asyncio.run(burst(fleet.envoy_url, 6))
        statuses = sorted(r.status_code for r in responses)
        assert statuses == [200, 200, 429, 429, 429, 429]
        refused = next(r for r in responses if r.status_code == 429)
        assert refused.headers["retry-after"] == "2"
        assert refused.json()["error"]["code"] == "overloaded"
        health = loopback().get(f"{fleet.admin_url}/health").json()
        assert health["max_concurrent_requests"] == 2
        wait_until(lambda: total_in_flight(fleet) == 0, what="in-flight back to 0")
        metrics = loopback().get(f"{fleet.admin_url}/metrics").text
        assert 'llm_picker_rejections_total{code="overloaded"} 4.0' in metrics


def test_queue_holds_requests_until_a_slot_frees() -> None:
    settings = {**FAST_HEALTH, "limits": {"max_concurrent_requests": 1, "queue_size": 4,
                                          "queue_timeout_secs": 5}}
    with local_fleet([SimSpec("a", MODEL, SLOW)], picker_settings=settings) as fleet:
        started = time.monotonic()
        responses = asyncio.run(burst(fleet.envoy_url, 3))
        assert [r.status_code for r in responses] == [200, 200, 200]
        assert time.monotonic() - started >= 1.1  # served one after another, not refused


def test_sigterm_drains_then_exits() -> None:
    with local_fleet([SimSpec("a", MODEL, SLOW)], picker_settings=FAST_HEALTH) as fleet:
        picker = fleet.processes["picker"]

        async def scenario() -> tuple[int, int]:
            async with httpx.AsyncClient(base_url=fleet.envoy_url, timeout=10) as client:
                in_flight = asyncio.create_task(client.post("/v1/chat/completions", json=BODY))
                await asyncio.sleep(0.15)
                picker.popen.send_signal(signal.SIGTERM)
                await asyncio.sleep(0.1)
                async with httpx.AsyncClient(timeout=2) as admin:
                    ready = (await admin.get(f"{fleet.admin_url}/ready")).status_code
                return ready, (await in_flight).status_code

        ready_during_drain, finished = asyncio.run(scenario())
        assert ready_during_drain == 503
        assert finished == 200
        assert picker.popen.wait(timeout=10) == 0


def test_a_second_sigterm_exits_at_once_cutting_what_is_in_flight() -> None:
    """The first SIGTERM drains (a 60 s grace here); a second is the operator wanting out now,
    as Ctrl-C twice is: the picker exits 1 at once, saying how many requests it cuts."""
    settings = {**FAST_HEALTH, "limits": {"shutdown_grace_secs": 60}}
    long = ["--ttft-ms", "5", "--tpot-ms", "50"]
    with local_fleet([SimSpec("a", MODEL, long)], picker_settings=settings) as fleet:
        picker = fleet.processes["picker"]

        async def scenario() -> float:
            async with httpx.AsyncClient(base_url=fleet.envoy_url, timeout=30) as client:
                streaming = asyncio.create_task(client.post("/v1/chat/completions", json={
                    **BODY, "max_tokens": 400, "stream": True}))
                await asyncio.sleep(0.3)
                picker.popen.send_signal(signal.SIGTERM)
                await asyncio.sleep(0.5)
                assert picker.popen.poll() is None  # draining: the stream has ~20 s left
                started = time.monotonic()
                picker.popen.send_signal(signal.SIGTERM)
                picker.popen.wait(timeout=5)
                streaming.cancel()
                return time.monotonic() - started

        assert asyncio.run(scenario()) < 3
        assert picker.popen.returncode == 1
        assert "a second stop signal: exiting now, cutting 1 requests in flight" in \
            picker.log_tail()
