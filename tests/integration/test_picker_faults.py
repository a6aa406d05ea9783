"""The picker itself failing under load, through the real Envoy: fail-open and fail-closed."""

from __future__ import annotations

import threading
import time
from collections import Counter

import httpx
import yaml

from picker_bench.loopback import loopback
from picker_bench.stack import ENVOY_FAIL_OPEN, Fleet, SimSpec, local_fleet, start_picker
from tests.integration.conftest import FAST_HEALTH, MODEL, metric_values
from tests.waiting import wait_until

BODY = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}


class SteadyLoad:
    """One client thread sending requests back to back (bounded in time and count); `stop_in`
    ends it sooner."""

    def __init__(self, url: str, seconds: float, limit: int = 3000) -> None:
        self.results: list[tuple[float, int]] = []
        self._stop = time.monotonic() + seconds

        def run() -> None:
            with httpx.Client(base_url=url, timeout=5) as client:
                while time.monotonic() < self._stop and len(self.results) < limit:
                    try:
                        status = client.post("/v1/chat/completions", json=BODY).status_code
                    except httpx.HTTPError:
                        status = 0
                    self.results.append((time.monotonic(), status))

        self._thread = threading.Thread(target=run)
        self._thread.start()

    def stop_in(self, seconds: float) -> None:
        self._stop = min(self._stop, time.monotonic() + seconds)

    def join(self) -> list[tuple[float, int]]:
        self._thread.join()
        return self.results


def load_tail(results: list[tuple[float, int]], since: float) -> str:
    """What the load got after `since`, for a failure message."""
    after = Counter(status for at, status in results if at > since)
    return f"{sum(after.values())} requests ({dict(after)})"


def restart_picker(fleet: Fleet) -> None:
    config = yaml.safe_load((fleet.workdir / "picker.yaml").read_text())
    fleet.processes["picker"] = start_picker(config, fleet.workdir)


# The engines stay up here: health checks that tolerate a loaded machine, so that a restarted
# picker whose first checks are slow (0.5 s, FAST_HEALTH's timeout, under a busy suite) does not
# count both engines down and answer 503 for the picker being slow, not for it dying.
STEADY_HEALTH = {"health": {**FAST_HEALTH["health"], "timeout_secs": 3.0,
                            "failure_threshold": 3}}


def test_fail_open_no_client_sees_the_picker_die() -> None:
    with local_fleet([SimSpec("a", MODEL), SimSpec("b", MODEL)], picker_settings=STEADY_HEALTH,
                     envoy_template=ENVOY_FAIL_OPEN) as fleet:
        load = SteadyLoad(fleet.envoy_url, seconds=4.0)
        time.sleep(1.0)
        fleet.processes["picker"].kill()
        time.sleep(1.0)
        restart_picker(fleet)
        results = load.join()
        statuses = Counter(status for _, status in results)
        assert statuses == {200: len(results)}, statuses
        assert len(results) > 50

        def routed_again() -> bool:
            """One more request, then whether the restarted picker decided any: under a
            loaded machine its start, or Envoy's reconnect to it, may outlast the load."""
            assert loopback().post(f"{fleet.envoy_url}/v1/chat/completions", json=BODY,
                                   timeout=5).status_code == 200
            return sum(metric_values(fleet, "llm_picker_decisions_total").values()) > 0

        wait_until(routed_again, timeout=15.0, what="the restarted picker routing again")


def test_fail_closed_clean_5xx_while_down_and_recovery_within_2s() -> None:
    """While the picker is down, clean 5xx; once it is ready again, Envoy routes through it
    within 2 s. Measured from the restarted picker's readiness: its own start-up (1-3 s of
    Python here, longer on a loaded machine) is not Envoy's recovery."""
    with local_fleet([SimSpec("a", MODEL)], picker_settings=FAST_HEALTH) as fleet:
        load = SteadyLoad(fleet.envoy_url, seconds=30.0)
        time.sleep(0.8)
        fleet.processes["picker"].kill()
        time.sleep(1.0)
        restarted = time.monotonic()
        restart_picker(fleet)
        ready = time.monotonic()
        load.stop_in(3.0)
        results = load.join()
        down = [status for at, status in results if ready > at > restarted - 0.8]
        assert down and all(status in (200, 500, 502, 503) for status in down)
        assert any(status >= 500 for status in down)  # refused cleanly, not hung
        recovered = next((at for at, status in results if at > ready and status == 200), None)
        assert recovered is not None, f"no 200 in the {load_tail(results, ready)} after ready"
        assert recovered - ready < 2.0
        assert all(status == 200 for at, status in results if at > recovered)
