"""A rolling upgrade of two picker replicas behind one real Envoy loses no request (issue 33).

As Kubernetes replaces a pod (maxSurge 1, maxUnavailable 0): a third replica starts and turns
ready, then the old one gets SIGTERM, while clients keep sending. Envoy's ext_proc cluster lists
the three replicas and health-checks the gRPC `readiness` service, as a gateway checks its
endpoint picker (and as Kubernetes probes take a terminating pod out of its Service). The old
replica's readiness turns false at SIGTERM, it keeps routing new requests for
`limits.shutdown_delay_secs` while Envoy notices, then drains and exits. Every request must
succeed (Envoy fails closed: a request whose picker is gone is a 500).
"""

from __future__ import annotations

import shutil
import signal
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

from picker_bench.stack import (
    Process,
    SimSpec,
    free_port,
    render_envoy_config,
    replica_configs,
    start_envoy,
    start_picker,
    start_sims,
    wait_picker_hosts,
)
from tests.integration.conftest import MODEL

CLIENTS = 4
# Engines found healthy fast, and not dropped for one slow check: this test is about the
# pickers, and on a loaded CI machine one health check over its timeout on both engines at once
# would turn a request into the picker's own 503 (no routable worker).
HEALTH = {"health": {"interval_secs": 0.1, "timeout_secs": 2.0, "failure_threshold": 3,
                     "success_threshold": 1}}


def _load(url: str, stop: threading.Event, statuses: Counter[int], failures: list[str]) -> None:
    with httpx.Client(base_url=url, timeout=10) as client:
        while not stop.is_set():
            try:
                response = client.post("/v1/chat/completions", json={
                    "model": MODEL, "max_tokens": 2,
                    "messages": [{"role": "user", "content": "hi"}]})
                status = response.status_code
                if status != 200:  # what answered, for the failure message
                    failures.append(f"{time.monotonic():.3f} {status} {response.headers} "
                                    f"{response.text[:300]}")
            except httpx.HTTPError as error:
                status = 0
                failures.append(f"{time.monotonic():.3f} {error!r}")
            statuses[status] += 1


def test_replacing_one_of_two_replicas_under_load_loses_no_request() -> None:
    workdir = Path(tempfile.mkdtemp(prefix="llm-picker-upgrade-"))
    started: list[Process] = []
    try:
        sims = [SimSpec(f"e{i}", MODEL, ["--ttft-ms", "5", "--tpot-ms", "2"]) for i in range(2)]
        started += start_sims(sims, workdir)
        workers = [{"url": f"http://127.0.0.1:{s.port}", "id": s.worker_id, "models": [MODEL]}
                   for s in sims]
        old, kept, new = replica_configs({
            **HEALTH, "policy": "least_load", "workers": workers,
            "limits": {"shutdown_delay_secs": 1.0}}, 3, share=False)
        pickers = [start_picker(config, workdir, name=f"picker-{i}")
                   for i, config in enumerate((old, kept))]
        started += pickers
        listen, admin = free_port(), free_port()
        ports = [config["extproc"]["port"] for config in (old, kept, new)]
        started.append(start_envoy(render_envoy_config(
            listen_port=listen, admin_port=admin, picker_port=ports[0],
            replica_ports=ports[1:]), workdir))
        envoy_admin = f"http://127.0.0.1:{admin}"
        wait_picker_hosts(envoy_admin, 2)

        stop, statuses, failures = threading.Event(), Counter[int](), list[str]()
        clients = [threading.Thread(target=_load, args=(f"http://127.0.0.1:{listen}", stop,
                                                        statuses, failures))
                   for _ in range(CLIENTS)]
        for client in clients:
            client.start()
        try:
            time.sleep(0.5)
            started.append(start_picker(new, workdir, name="picker-new"))  # the surge pod
            wait_picker_hosts(envoy_admin, 3)
            events = [f"{time.monotonic():.3f} new replica healthy in Envoy"]
            before = sum(statuses.values())
            pickers[0].popen.send_signal(signal.SIGTERM)  # the old pod's termination
            events.append(f"{time.monotonic():.3f} SIGTERM")
            assert pickers[0].popen.wait(20) == 0, pickers[0].log_tail()
            events.append(f"{time.monotonic():.3f} old replica exited")
            wait_picker_hosts(envoy_admin, 2)
            time.sleep(0.5)
        finally:
            stop.set()
            for client in clients:
                client.join(15)
        assert sum(statuses.values()) - before > 50, statuses  # under load throughout
        assert statuses == {200: sum(statuses.values())}, "\n".join(
            [str(statuses), *events, *failures, pickers[0].log_tail(40)])
        assert "still routing for 1.0s" in pickers[0].log_path.read_text()
    finally:
        for proc in reversed(started):
            proc.stop()
        shutil.rmtree(workdir, ignore_errors=True)
