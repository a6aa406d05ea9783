"""Admission limits, the waiting queue, per-worker caps and exactly-once slot release."""

from __future__ import annotations

import asyncio
import random
import threading

import pytest

from picker.config import PickerConfig
from picker.errors import Overloaded
from picker.routing.admission import Admission, LimitSettings
from picker.routing.request import Api, RoutingRequest
from picker.runtime import PickerRuntime

REQ = RoutingRequest(model="m", api=Api.CHAT)


def router(workers: int = 2, **limits: float) -> PickerRuntime:
    # Circuit breakers off: upstream_error outcomes here are bookkeeping, not worker faults.
    return PickerRuntime(PickerConfig.model_validate({
        "workers": [{"url": f"h:{i + 1}", "id": f"w{i}", "models": ["m"]}
                    for i in range(workers)],
        "circuit": {"enabled": False}, "policy": "least_load", "limits": limits}))


def test_global_limit_refuses_with_retry_after_and_recovers() -> None:
    r = router(max_concurrent_requests=2, retry_after_secs=3)
    leases = [r.routing.route_sync(REQ), r.routing.route_sync(REQ)]
    with pytest.raises(Overloaded) as caught:
        r.routing.route_sync(REQ)
    assert caught.value.status == 429 and caught.value.headers() == {"retry-after": "3"}
    leases[0].release("completed")
    r.routing.route_sync(REQ)
    assert r.leases.active == 2


def test_per_worker_cap() -> None:
    r = router(per_worker_max=1)
    r.routing.route_sync(REQ), r.routing.route_sync(REQ)
    with pytest.raises(Overloaded, match="per|limit"):
        r.routing.route_sync(REQ)
    assert r.leases.active == 2  # the refused pick gave its admission slot back


async def test_queue_waits_for_a_release_then_times_out() -> None:
    admission = Admission(LimitSettings(max_concurrent_requests=1, queue_size=1,
                                        queue_timeout_secs=0.2))
    admission.try_enter()
    waiter = asyncio.create_task(admission.enter())
    await asyncio.sleep(0.05)
    assert admission.waiting == 1
    with pytest.raises(Overloaded):  # queue full
        await admission.enter()
    admission.leave()  # hands the slot to the waiter
    await waiter
    assert admission.active == 1 and admission.waiting == 0
    with pytest.raises(Overloaded, match="timed out"):
        await admission.enter()
    assert admission.active == 1 and admission.waiting == 0


def test_expire_releases_leases_whose_end_never_came() -> None:
    r = router(timeout_secs=10)
    lease = r.routing.route_sync(REQ)
    assert r.leases.expire(now=lease.started + 5) == 0
    assert r.leases.expire(now=lease.started + 11) == 1
    assert not lease.open and r.leases.active == 0
    assert 'outcome="timeout"' in r.metrics.render().decode()


def test_thousands_of_mixed_outcomes_leave_every_counter_at_zero() -> None:
    """Releases from several threads, repeated and out of order: each counts exactly once."""
    r = router(workers=4, max_concurrent_requests=64)
    rng = random.Random(5)
    outcomes = ["completed", "cancelled", "upstream_error", "timeout"]
    leases = []
    refused = 0
    for _ in range(5000):
        try:
            leases.append(r.routing.route_sync(REQ))
        except Overloaded:
            refused += 1
            victim = leases.pop(rng.randrange(len(leases)))
            victim.release(rng.choice(outcomes))
    assert refused > 0

    def release_all(chunk: list) -> None:  # type: ignore[type-arg]
        for lease in chunk:
            for _ in range(3):
                lease.release(rng.choice(outcomes))

    threads = [threading.Thread(target=release_all, args=(leases[i::4] + leases[:50],))
               for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert r.leases.active == 0 and r.leases.expire(now=float("inf")) == 0
    assert all(w.in_flight == 0 for w in r.registry.workers())
    text = r.metrics.render().decode()
    released = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("llm_picker_requests_total{"))
    assert released == 5000 - refused  # every admitted request ended exactly once
    assert sum(r.leases.outcomes.values()) == 5000 - refused
    ratio = r.leases.outcomes.get("completed", 0) / (5000 - refused)
    assert f"llm_picker_success_ratio {ratio}" in text


async def test_a_request_cancelled_while_queued_leaks_no_slot() -> None:
    """A client that goes away while queued must not take the next free slot with it."""
    admission = Admission(LimitSettings(max_concurrent_requests=1, queue_size=4,
                                        queue_timeout_secs=5))
    admission.try_enter()
    waiter = asyncio.create_task(admission.enter())
    await asyncio.sleep(0.02)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert admission.waiting == 0
    admission.leave()
    assert admission.active == 0
    admission.try_enter()  # the freed slot is there for the next request


async def test_a_waiter_cancelled_just_after_its_handover_gives_the_slot_back() -> None:
    admission = Admission(LimitSettings(max_concurrent_requests=1, queue_size=4,
                                        queue_timeout_secs=5))
    admission.try_enter()
    waiter = asyncio.create_task(admission.enter())
    await asyncio.sleep(0.02)
    admission.leave()  # hands the slot to the waiter (resolved on the loop's next turn)
    waiter.cancel()  # ... which is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert admission.active == 0 and admission.waiting == 0
