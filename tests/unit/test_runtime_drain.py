"""SIGTERM's shutdown delay against a balancer slower than it: routing goes on after the delay
while requests keep arriving, and stops once they cease, or at twice the delay at most."""

from __future__ import annotations

import asyncio
import time

from picker.config import PickerConfig
from picker.routing.outcome import Outcome
from picker.routing.request import Api, RoutingRequest
from picker.runtime import PickerRuntime

DELAY = 0.3
# Upper bounds leave this much for a loaded machine's late wake-ups; each still separates the
# behaviour from its absence (which would end at the delay, or after the last request).
SLACK = 0.45


async def _started() -> PickerRuntime:
    runtime = PickerRuntime(PickerConfig.model_validate({
        "admin": {"enabled": False}, "health": {"enabled": False},
        "workers": [{"url": "http://127.0.0.1:9", "models": ["m"]}]}))
    await runtime.start()
    return runtime


async def _send_for(runtime: PickerRuntime, seconds: float,
                    stopping: asyncio.Task[None]) -> list[bool]:
    """A request every 20 ms for `seconds`; whether the stop had finished at each."""
    request = RoutingRequest(model="m", api=Api.CHAT)
    finished = []
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        finished.append(stopping.done())
        if not stopping.done():
            lease = await runtime.routing.route(request)
            lease.release(Outcome.COMPLETED)
        await asyncio.sleep(0.02)
    return finished


async def test_routing_goes_on_after_the_delay_while_requests_keep_arriving() -> None:
    runtime = await _started()
    began = time.monotonic()
    stopping = asyncio.create_task(runtime.stop(grace_secs=5, delay_secs=DELAY))
    finished = await _send_for(runtime, 1.5 * DELAY, stopping)  # past the delay, not twice it
    assert not any(finished)  # every request was routed, none met a stopped picker
    await stopping
    took = time.monotonic() - began
    assert 1.5 * DELAY <= took < 2 * DELAY + SLACK, took  # after the last request's quiet


async def test_a_balancer_that_never_stops_sending_gets_twice_the_delay() -> None:
    runtime = await _started()
    began = time.monotonic()
    stopping = asyncio.create_task(runtime.stop(grace_secs=5, delay_secs=DELAY))
    stopped: list[float] = []
    stopping.add_done_callback(lambda _: stopped.append(time.monotonic()))
    finished = await _send_for(runtime, 4 * DELAY, stopping)
    assert finished[-1]
    assert 2 * DELAY <= stopped[0] - began < 2 * DELAY + SLACK


async def test_no_traffic_means_the_delay_alone() -> None:
    runtime = await _started()
    began = time.monotonic()
    await runtime.stop(grace_secs=5, delay_secs=DELAY)
    assert time.monotonic() - began < DELAY + SLACK
