"""Workers from DNS: a headless Service's A/AAAA records (or SRV targets and ports), polled.

For clusters where the picker has no API access: every address the name resolves to is a
worker, owned by `dns:<name>` through WorkerManager.declare (discovery of models, drain on
removal). A name that does not exist (NXDOMAIN) or has no records is an empty fleet - a
headless Service with no ready pod answers so. A failed lookup (timeout, SERVFAIL) keeps the
current workers: a resolver hiccup must not drain the fleet.
"""

from __future__ import annotations

import asyncio
import logging

import dns.asyncresolver
import dns.exception
import dns.nameserver
import dns.resolver

from picker.fleet.manager import WorkerManager
from picker.fleet.sources.settings import DnsSettings, nameserver_address
from picker.fleet.sources.status import SourceStatus
from picker.fleet.worker_spec import WorkerSpec

__all__ = ["DnsSource"]

log = logging.getLogger("llm_picker.sources.dns")

_EMPTY = (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer)


class DnsSource(SourceStatus):
    def __init__(self, settings: DnsSettings, manager: WorkerManager) -> None:
        super().__init__(log)
        self._settings = settings
        self._manager = manager
        self._resolver = _resolver(settings)
        self._task: asyncio.Task[None] | None = None

    @property
    def owner(self) -> str:
        return f"dns:{self._settings.name}"

    async def start(self) -> None:
        self._task = asyncio.create_task(self._poll_forever())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _poll_forever(self) -> None:
        while True:
            try:
                endpoints = await self.endpoints()
            except dns.exception.DNSException as exc:
                self._failed(f"dns discovery failed, workers kept: {self._settings.name}: "
                             f"{type(exc).__name__}: {exc}"[:300])
            else:
                self._last_error = None
                specs = [WorkerSpec(url=f"{self._settings.scheme}://{_host(ip)}:{port}",
                                    runtime_type=self._settings.runtime_type)
                         for ip, port in sorted(endpoints)]
                await self._manager.declare(self.owner, specs,
                                            self._settings.drain_timeout_secs)
                self._synced = True
            await asyncio.sleep(self._settings.interval_secs)

    async def endpoints(self) -> set[tuple[str, int]]:
        """(address, port) pairs the name resolves to now."""
        if not self._settings.srv:
            assert self._settings.port is not None  # validated
            return {(ip, self._settings.port) for ip in await self._addresses(self._settings.name)}
        try:
            answer = await self._resolver.resolve(self._settings.name, "SRV")
        except _EMPTY:
            return set()
        found: set[tuple[str, int]] = set()
        for record in answer:
            port = self._settings.port or int(record.port)
            found |= {(ip, port) for ip in await self._addresses(record.target.to_text())}
        return found

    async def _addresses(self, name: str) -> set[str]:
        found: set[str] = set()
        for kind in ("A", "AAAA"):
            try:
                answer = await self._resolver.resolve(name, kind)
            except _EMPTY:
                continue
            found |= {record.to_text() for record in answer}
        return found


def _resolver(settings: DnsSettings) -> dns.asyncresolver.Resolver:
    resolver = dns.asyncresolver.Resolver(configure=not settings.nameservers)
    if settings.nameservers:
        resolver.nameservers = [_nameserver(s) for s in settings.nameservers]
    resolver.lifetime = settings.timeout_secs
    return resolver


def _nameserver(text: str) -> dns.nameserver.Nameserver:
    return dns.nameserver.Do53Nameserver(*nameserver_address(text))


def _host(ip: str) -> str:
    return f"[{ip}]" if ":" in ip else ip
