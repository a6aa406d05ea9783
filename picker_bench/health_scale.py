"""`llm-picker bench health-scale`: thousands of workers registered through the admin API, a
share of them unreachable (issue 30).

The live workers are one light HTTP server in this process listening on a port per worker
(answering /health and an idle vLLM /metrics, counting probes per port); the unreachable ones
are addresses of 127/8 on port 1, which refuse at once. Each phase runs a fresh `llm-picker
serve` with the shipped health and load settings and reports, for the live workers: the
smallest share routable in any sample (GET /workers every 3 s: listing thousands of workers
costs the picker CPU of its own), the achieved probe period (seconds / probes seen, median and
worst), the picker's CPU, and this process's (mostly the live workers' server). The baseline
is two live workers alone; after each fleet with unreachable workers, a phase deletes them and
checks that probes still reach the live ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import httpx

from picker_bench.loopback import loopback
from picker_bench.stack import Process, cpu_seconds, free_port, start_picker

__all__ = ["HealthStub", "delete_workers", "register_workers", "run_health_scale",
           "unreachable_urls"]

MODEL = "scale-model"
_METRICS = b"vllm:num_requests_running 0\nvllm:num_requests_waiting 0\n"


def unreachable_urls(count: int) -> list[str]:
    """`count` worker urls that refuse connections: distinct loopback addresses (all of 127/8
    is this host's), port 1, where nothing listens."""
    return [f"http://127.0.{1 + i // 250}.{1 + i % 250}:1" for i in range(count)]


async def register_workers(admin_url: str, urls: Sequence[str], concurrency: int = 16) -> None:
    """POST each url as a worker serving MODEL (models given: an unreachable one registers
    unhealthy, 202, as the issue's probe did)."""
    async with httpx.AsyncClient(base_url=admin_url, timeout=30) as client:
        gate = asyncio.Semaphore(concurrency)

        async def one(url: str) -> None:
            async with gate:
                body = {"url": url, "models": [MODEL], "runtime_type": "vllm"}
                response = await client.post("/workers", json=body)
                if response.status_code not in (201, 202):
                    raise RuntimeError(f"POST /workers {url}: {response.status_code} "
                                       f"{response.text[:200]}")

        await asyncio.gather(*(one(url) for url in urls))


async def delete_workers(admin_url: str, urls: Sequence[str], concurrency: int = 16) -> None:
    async with httpx.AsyncClient(base_url=admin_url, timeout=30) as client:
        gate = asyncio.Semaphore(concurrency)

        async def one(url: str) -> None:
            async with gate:
                response = await client.delete(f"/workers/{quote(url, safe='')}",
                                               params={"drain_timeout_secs": 0})
                response.raise_for_status()

        await asyncio.gather(*(one(url) for url in urls))


class _StubConnection(asyncio.Protocol):
    """Keep-alive HTTP/1.1 GETs, no bodies: enough for health probes and scrapes."""

    def __init__(self, hits: Counter[int], port: int) -> None:
        self._hits = hits
        self._port = port
        self._buffer = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while self._transport is not None and b"\r\n\r\n" in self._buffer:
            head, _, self._buffer = self._buffer.partition(b"\r\n\r\n")
            path = head.split(b" ", 2)[1] if head.count(b" ") >= 2 else b""
            body = _METRICS if path == b"/metrics" else b"{}"
            if path == b"/health":
                self._hits[self._port] += 1
            self._transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s"
                                  % (len(body), body))


class HealthStub:
    """`count` live workers on ports of their own, served by a thread of this process."""

    def __init__(self, count: int) -> None:
        self.ports = [free_port() for _ in range(count)]
        self.hits: Counter[int] = Counter()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    @property
    def urls(self) -> list[str]:
        return [f"http://127.0.0.1:{port}" for port in self.ports]

    @contextlib.contextmanager
    def running(self) -> Iterator[HealthStub]:
        self._thread.start()
        servers = [asyncio.run_coroutine_threadsafe(self._listen(port), self._loop).result()
                   for port in self.ports]
        try:
            yield self
        finally:
            for server in servers:
                self._loop.call_soon_threadsafe(server.close)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)

    async def _listen(self, port: int) -> asyncio.Server:
        return await asyncio.get_running_loop().create_server(
            lambda: _StubConnection(self.hits, port), "127.0.0.1", port)


@dataclass(frozen=True, slots=True)
class _Phase:
    name: str
    workers: int
    routable_min: float  # smallest share of live workers routable in any sample
    period_median: float
    period_worst: float
    cpu_share: float  # picker CPU seconds per second (1.0 = one core)
    stub_share: float  # this process's (the live workers' server, mostly)


def _picker(workdir: Path, name: str) -> tuple[Process, str]:
    admin = free_port()
    config = {"extproc": {"port": free_port()}, "admin": {"port": admin}, "workers": []}
    return start_picker(config, workdir, name), f"http://127.0.0.1:{admin}"


def _measure(name: str, picker: Process, admin_url: str, stub: HealthStub,
             live: Sequence[str], workers: int, seconds: float) -> _Phase:
    ports = [int(url.rsplit(":", 1)[1]) for url in live]
    before = {port: stub.hits[port] for port in ports}
    cpu0, own0, start = cpu_seconds(picker), time.process_time(), time.monotonic()
    routable: list[float] = []
    while time.monotonic() - start < seconds:
        time.sleep(3.0)
        listed = loopback().get(f"{admin_url}/workers", params={"model": MODEL}, timeout=30).json()
        live_set = set(live)
        states = [w["state"]["routable"] for w in listed["workers"] if w["url"] in live_set]
        routable.append(sum(states) / len(live))
    elapsed = time.monotonic() - start
    cpu = (cpu_seconds(picker) - cpu0) / elapsed
    own = (time.process_time() - own0) / elapsed
    periods = sorted(elapsed / max(stub.hits[port] - before[port], 1) for port in ports)
    return _Phase(name, workers, min(routable), statistics.median(periods), periods[-1], cpu,
                  own)


def _scenario(workdir: Path, name: str, stub: HealthStub, live: Sequence[str],
              dead: Sequence[str], seconds: float) -> list[_Phase]:
    """A fresh picker with `live` + `dead` registered; with `dead`, a second phase after they
    are deleted."""
    picker, admin_url = _picker(workdir, name)
    try:
        started = time.monotonic()
        asyncio.run(register_workers(admin_url, [*live, *dead]))
        print(f"{name}: registered {len(live) + len(dead)} workers in "
              f"{time.monotonic() - started:.1f} s", flush=True)
        label = f"{len(live)} live" + (f" + {len(dead)} unreachable" if dead else " alone")
        phases = [_measure(label, picker, admin_url, stub, live, len(live) + len(dead),
                           seconds)]
        if dead:
            started = time.monotonic()
            asyncio.run(delete_workers(admin_url, dead))
            print(f"{name}: deleted {len(dead)} in {time.monotonic() - started:.1f} s",
                  flush=True)
            phases.append(_measure(f"{len(live)} live, unreachable deleted", picker,
                                   admin_url, stub, live, len(live), seconds))
        return phases
    finally:
        picker.stop()


def run_health_scale(workers: int = 2000, unreachable: float = 0.5,
                     seconds: float = 30.0) -> int:
    dead = unreachable_urls(int(workers * unreachable))
    with tempfile.TemporaryDirectory(prefix="llm-picker-health-") as tmp, \
            HealthStub(workers - len(dead)).running() as stub:
        workdir = Path(tmp)
        two = stub.urls[:2]
        phases = [*_scenario(workdir, "baseline", stub, two, [], seconds),
                  *_scenario(workdir, "few-live", stub, two, dead, seconds),
                  *_scenario(workdir, "half-live", stub, stub.urls, dead, seconds)]
    base = phases[0]
    print(f"\nhealth checks at scale: shipped settings (health and load every 1 s, health "
          f"timeout 2 s, 2 failures eject), {seconds:.0f} s per phase")
    print(f"{'phase':36} {'workers':>7} {'routable min':>12} {'period med':>10} "
          f"{'period max':>10} {'picker CPU':>10} {'stub CPU':>8} {'max period vs base':>18}")
    for phase in phases:
        print(f"{phase.name:36} {phase.workers:7d} {phase.routable_min:12.1%} "
              f"{phase.period_median:9.2f}s {phase.period_worst:9.2f}s "
              f"{phase.cpu_share:10.1%} {phase.stub_share:8.1%} "
              f"{phase.period_worst / base.period_worst:17.2f}x")
    return 0 if all(p.routable_min == 1.0 for p in phases) else 1
