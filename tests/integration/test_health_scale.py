"""Health checks with a thousand unreachable workers registered through the admin API (issue 30).

Before the fix the picker spent its CPU in the HTTP client's pool bookkeeping, the live engines
went unprobed until ejected, and after the unreachable workers were deleted no probe reached
any worker again. Here the two live engines must be probed within interval x failure_threshold
throughout, stay routable through Envoy, and keep being probed after the deletion.
"""

from __future__ import annotations

import asyncio
import time

from picker_bench.health_scale import delete_workers, register_workers, unreachable_urls
from picker_bench.loopback import loopback
from picker_bench.stack import Fleet, SimSpec, local_fleet
from tests.integration.conftest import MODEL

UNREACHABLE = 1000
INTERVAL, FAILURES = 0.5, 2
SETTINGS = {"health": {"interval_secs": INTERVAL, "timeout_secs": 1.0,
                       "failure_threshold": FAILURES, "success_threshold": 1}}


def live_engines_keep_up(fleet: Fleet, seconds: float) -> None:
    """For `seconds`: both engines healthy, probed within interval x failure_threshold, and
    a chat completion through Envoy answered."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        listed = loopback().get(f"{fleet.admin_url}/workers", params={"model": MODEL},
                                timeout=10).json()["workers"]
        states = {w["id"]: w["state"] for w in listed}
        assert sorted(states) == ["a", "b"]
        for worker_id, state in states.items():
            age = state["last_health_check_age_secs"]
            assert state["routable"], (worker_id, state)
            assert age is not None and age < INTERVAL * FAILURES, (worker_id, state)
        response = loopback().post(f"{fleet.envoy_url}/v1/chat/completions", timeout=10, json={
            "model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
        assert response.status_code == 200, response.text
        time.sleep(0.2)


def test_unreachable_workers_cost_live_ones_nothing_and_deleting_them_recovers() -> None:
    dead = unreachable_urls(UNREACHABLE)
    with local_fleet([SimSpec("a", MODEL), SimSpec("b", MODEL)], picker_settings=SETTINGS) \
            as fleet:
        asyncio.run(register_workers(fleet.admin_url, dead))
        live_engines_keep_up(fleet, seconds=4.0)
        asyncio.run(delete_workers(fleet.admin_url, dead))
        total = loopback().get(f"{fleet.admin_url}/workers", timeout=10).json()["total"]
        assert total == 2
        live_engines_keep_up(fleet, seconds=3.0)
