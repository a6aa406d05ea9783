"""A health probe through the gateway (`GET /health`, no body) through the real Envoy, in both
modes (issue 31 item 11): answered by a routable worker, or the picker's 503 when none is, so
a probe in front of the gateway learns whether the fleet can serve. It used to be a 404."""

from __future__ import annotations

import pytest

from picker_bench.loopback import loopback
from picker_bench.stack import local_fleet
from tests.http_stub import StubServer
from tests.integration.conftest import FAST_HEALTH, MODEL, metric_values, wait_until


@pytest.mark.parametrize("mode", ["BUFFERED", "FULL_DUPLEX_STREAMED", "authz"])
def test_health_probe_follows_the_fleet(mode: str) -> None:
    engine = StubServer({"/health": {"engine": "up"}})
    worker = {"url": engine.url, "id": "engine", "models": [MODEL]}
    try:
        with local_fleet([], picker_settings={"workers": [worker], **FAST_HEALTH},
                         authz=mode == "authz",
                         body_mode="BUFFERED" if mode == "authz" else mode) as fleet:
            up = loopback().get(f"{fleet.envoy_url}/health", timeout=10)
            assert (up.status_code, up.json()) == (200, {"engine": "up"})
            assert loopback().head(f"{fleet.envoy_url}/health", timeout=10).status_code == 200
            engine.pages.clear()
            engine.status = 503  # the engine's own health fails: the picker ejects it
            wait_until(lambda: metric_values(fleet, "llm_picker_worker_healthy").get(
                (("worker", "engine"),)) == 0.0, what="engine ejected")
            down = loopback().get(f"{fleet.envoy_url}/health", timeout=10)
    finally:
        engine.close()
    assert down.status_code == 503
    assert "routable" in down.json()["error"]["message"]
