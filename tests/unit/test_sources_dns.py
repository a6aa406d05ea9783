"""DNS discovery against a real DNS server on loopback (dnslib), records changed by the test;
engines are stubs on 127.0.0.2-3 answering /v1/models."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

pytest.importorskip("dns")
pytest.importorskip("dnslib")

from dnslib import AAAA, QTYPE, RR, SRV, A, DNSRecord  # noqa: E402
from dnslib.server import BaseResolver, DNSServer  # noqa: E402

from picker.fleet.manager import WorkerManager  # noqa: E402
from picker.fleet.registry import WorkerRegistry  # noqa: E402
from picker.fleet.served_models import DiscoverySettings  # noqa: E402
from picker.fleet.sources.dns import DnsSource  # noqa: E402
from picker.fleet.sources.settings import DnsSettings  # noqa: E402
from tests.unit.test_sources_kubernetes import IPS, _free_port, vllm_models  # noqa: E402

NAME = "vllm.ns.svc.cluster.local."


class Zone(BaseResolver):  # type: ignore[misc]
    """Answers from `records` (qname, qtype) -> rdata list; unknown names are NXDOMAIN."""

    def __init__(self) -> None:
        self.records: dict[tuple[str, str], list[Any]] = {}
        self.fail = False

    def resolve(self, request: DNSRecord, handler: Any) -> DNSRecord:
        reply = request.reply()
        qname, qtype = str(request.q.qname), QTYPE[request.q.qtype]
        if self.fail:
            reply.header.rcode = 2  # SERVFAIL
            return reply
        if not any(name == qname for name, _ in self.records):
            reply.header.rcode = 3  # NXDOMAIN
        for rdata in self.records.get((qname, qtype), []):
            reply.add_answer(RR(qname, getattr(QTYPE, qtype), rdata=rdata, ttl=1))
        return reply


@pytest.fixture
def zone() -> Iterator[tuple[Zone, int]]:
    resolver = Zone()
    server = DNSServer(resolver, port=0, address="127.0.0.1")
    server.start_thread()
    yield resolver, server.server.server_address[1]
    server.stop()


@pytest.fixture
async def port() -> AsyncIterator[int]:
    number = _free_port()
    async with vllm_models(IPS[:2], [number]):
        yield number


async def _urls(registry: WorkerRegistry, want: set[str], source: DnsSource) -> None:
    """Until the registry holds `want` and the lookup that put it there has finished (the
    registry changes inside `declare`, before the source counts the view as applied)."""
    deadline = time.monotonic() + 8
    while {w.url for w in registry.workers()} != want or not source.synced:
        assert time.monotonic() < deadline, (
            f"workers {[w.url for w in registry.workers()]}, error {source.last_error}")
        await asyncio.sleep(0.02)


@pytest.mark.parametrize("srv", [False, True])
async def test_addresses_follow_the_records(zone: tuple[Zone, int], port: int,
                                            srv: bool) -> None:
    records, dns_port = zone
    records.records[(NAME, "A")] = [A(IPS[0]), A(IPS[1])]
    records.records[(NAME, "AAAA")] = []
    if srv:
        records.records[(NAME, "SRV")] = [SRV(target=NAME, port=port)]
    registry = WorkerRegistry([])
    manager = WorkerManager(registry, DiscoverySettings(max_wait_secs=2))
    source = DnsSource(DnsSettings(
        name=NAME, port=None if srv else port, srv=srv, interval_secs=0.1,
        nameservers=[f"127.0.0.1:{dns_port}"], drain_timeout_secs=0.2), manager)
    await manager.start()
    await source.start()
    try:
        both = {f"http://{ip}:{port}" for ip in IPS[:2]}
        await _urls(registry, both, source)
        assert source.synced and source.owner == f"dns:{NAME}"
        records.records[(NAME, "A")] = [A(IPS[1])]
        await _urls(registry, {f"http://{IPS[1]}:{port}"}, source)
        records.fail = True  # SERVFAIL: the workers stay
        await asyncio.sleep(0.5)
        assert source.last_error is not None
        assert {w.url for w in registry.workers()} == {f"http://{IPS[1]}:{port}"}
        records.fail = False
        records.records.clear()  # NXDOMAIN: no pod is ready, the fleet is empty
        await _urls(registry, set(), source)
    finally:
        await source.stop()
        await manager.stop()


async def test_aaaa_records_make_bracketed_urls(zone: tuple[Zone, int]) -> None:
    records, dns_port = zone
    records.records[(NAME, "A")] = []
    records.records[(NAME, "AAAA")] = [AAAA("::1")]
    source = DnsSource(DnsSettings(name=NAME, port=8000, nameservers=[f"127.0.0.1:{dns_port}"]),
                       WorkerManager(WorkerRegistry([]), DiscoverySettings()))
    assert await source.endpoints() == {("::1", 8000)}


@pytest.mark.parametrize("bad", ["host:port", "[::1", "a:1:2:x"])
def test_bad_nameservers_are_config_errors(bad: str) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="nameserver"):
        DnsSettings(name=NAME, port=1, nameservers=[bad])
