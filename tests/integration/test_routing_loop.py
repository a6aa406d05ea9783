"""A worker that is the proxy itself: Envoy's own listener registered as an engine. Each request
would come back through the picker and be routed there again, about a thousand times until
Envoy's circuit breaker, the client waiting all the while; the picker refuses it the first
time it comes back (picker.routing.hops), through the real Envoy in both modes."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from picker_bench.loopback import loopback
from picker_bench.stack import (
    free_port,
    render_authz_config,
    render_envoy_config,
    start_envoy,
    start_picker,
    wait_listening,
)


@pytest.mark.parametrize("mode", ["extproc", "authz"])
def test_a_worker_that_is_the_proxy_itself_gets_a_508_not_a_thousand_hops(
        tmp_path: Path, mode: str) -> None:
    listen, picker_port = free_port(), free_port()
    authz_port = free_port() if mode == "authz" else None
    config: dict[str, Any] = {"extproc": {"port": picker_port}, "admin": {"port": free_port()},
              "health": {"enabled": False},
              "workers": [{"url": f"http://127.0.0.1:{listen}", "models": ["loop-model"]}]}
    picker = start_picker(config, tmp_path, authz_port=authz_port)
    try:
        envoy_config = render_envoy_config(listen_port=listen, admin_port=free_port(),
                                           picker_port=picker_port) \
            if authz_port is None else render_authz_config(
                listen_port=listen, admin_port=free_port(), picker_port=picker_port,
                authz_port=authz_port)
        envoy = start_envoy(envoy_config, tmp_path)
        try:
            wait_listening([listen])
            started = time.monotonic()
            response = loopback().post(
                f"http://127.0.0.1:{listen}/v1/chat/completions", timeout=30,
                json={"model": "loop-model", "messages": [{"role": "user", "content": "hi"}]})
            assert time.monotonic() - started < 5
            if mode == "extproc":
                assert response.status_code == 508, response.text
                assert response.json()["error"]["code"] == "routing_loop"
            else:  # ext_authz takes a check server's 5xx for its own failure: Envoy's 503
                assert response.status_code == 503, response.text
            metrics = loopback().get(f"http://127.0.0.1:{config['admin']['port']}/metrics",
                                     timeout=5).text
            assert 'llm_picker_rejections_total{code="routing_loop"} 1.0' in metrics
        finally:
            envoy.stop()
    finally:
        picker.stop()
