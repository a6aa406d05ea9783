"""picker_bench.stack, the harness every integration test and benchmark starts servers with."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from picker_bench.stack import FIXED_PORTS_BELOW, free_port, free_port_run, port_range
from tests.integration.test_readme import PORTS as README_PORTS
from tests.waiting import process_running

_FAILS_BETWEEN_TWO_STARTS = """
import sys
from pathlib import Path
from picker_bench.stack import SimSpec, start_sim
proc = start_sim(SimSpec("leftover", "m"), Path(sys.argv[1]))
print(proc.popen.pid, flush=True)
raise SystemExit("failed before stopping it")
"""


def test_a_server_left_running_by_a_failure_dies_with_the_harness(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-c", _FAILS_BETWEEN_TWO_STARTS, str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stderr
    pid = int(done.stdout.split()[0])
    deadline = time.monotonic() + 5
    while process_running(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not process_running(pid)


def test_ports_are_never_handed_out_twice_nor_from_the_ephemeral_range() -> None:
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    run = free_port_run(3)
    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)
    assert not set(ports) & {run, run + 1, run + 2}
    assert all(port < low for port in [*ports, run])


def test_free_ports_are_never_the_readmes_fixed_ports() -> None:
    """The README test listens on fixed ports while other tests run beside it (pytest-xdist)."""
    assert max(README_PORTS) < FIXED_PORTS_BELOW <= port_range().start
    assert not {free_port() for _ in range(200)} & set(README_PORTS)


def test_each_xdist_worker_hands_out_ports_of_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two test processes check a port free, each before the other's server binds it: they
    must never draw from the same ports."""
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "3")
    slices = []
    for worker in ("gw0", "gw1", "gw2"):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", worker)
        slices.append(set(port_range()))
    assert all(len(ports) >= 1000 for ports in slices)
    assert not slices[0] & slices[1] and not slices[1] & slices[2] and not slices[0] & slices[2]
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw1")
    assert {free_port() for _ in range(50)} <= slices[1]
    run = free_port_run(3)
    assert set(range(run, run + 3)) <= slices[1]
