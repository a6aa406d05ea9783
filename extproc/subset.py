"""The gateway's endpoint subset hint, matched the way the reference picker matches it.

The hint (metadata `envoy.lb.subset_hint` / `x-gateway-destination-endpoint-subset`) lists
`address:port` strings, pod IPs in a gateway. llm-d-router keeps only the address and compares it
with each endpoint's IP (pkg/epp/requestcontrol/candidates.go:132-156: "We only care about the
IP address for matching"). So here, per entry of the hint: the workers at that address and
port, where a worker's addresses are its IP literal or what its hostname resolves to; when none
listens on that port, every worker at that address, as the reference picker would allow. A worker
declared as `localhost:8000` is in a hint naming `127.0.0.1:8000`, and in one naming
`127.0.0.1:9000` unless another worker is at 127.0.0.1:9000 (several engines on one host keep
their precise subsets).

Resolving a hostname may take seconds, so it never happens on the event loop that serves the
streams: a name's addresses are kept for `_TTL_SECS`, and a missing or stale entry is refreshed
in the loop's resolver thread while the hint is matched against what is known (the name alone,
the first time: one request with a hint may miss a worker declared by hostname). Workers
declared by IP (every gateway's) never resolve anything. A name that does not resolve has no
address and matches nothing but itself.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections.abc import Iterable, Sequence
from typing import Any

from picker.routing.contract import Worker

__all__ = ["SubsetMatcher"]

_TTL_SECS = 60.0
_MAX_NAMES = 4096  # hostnames remembered; a picker has far fewer workers


def _split(text: str) -> tuple[str, str]:
    """`10.0.0.1:8000`, `[fd00::1]:8000`, `10.0.0.1` or a name -> (host, port or ""), an IP
    host in its canonical form (so `::0001` and `::1` are equal)."""
    host, port = text.strip(), ""
    if host.startswith("["):
        host, _, rest = host[1:].partition("]")
        port = rest.removeprefix(":")
    elif host.count(":") == 1:
        host, _, port = host.partition(":")
    try:
        return str(ipaddress.ip_address(host)), port
    except ValueError:
        return host.lower(), port


class SubsetMatcher:
    """Worker ids a subset hint allows; owns the hostname cache (one per picker process)."""

    def __init__(self) -> None:
        self._resolved: dict[str, tuple[float, frozenset[str]]] = {}
        self._refreshing: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    def allowed(self, workers: Iterable[Worker], hint: Iterable[str]) -> set[str]:
        located = []  # (id, addresses, port) per worker
        for worker in workers:
            host, port = _split(worker.host_port)
            located.append((worker.id, self._addresses(host), port))
        allowed: set[str] = set()
        for entry in hint:
            address, port = _split(entry)
            at_address = [(wid, wport) for wid, addresses, wport in located
                          if address in addresses]
            exact = {wid for wid, wport in at_address if wport == port}
            allowed |= exact or {wid for wid, _ in at_address}
        return allowed

    def _addresses(self, host: str) -> frozenset[str]:
        try:
            return frozenset((str(ipaddress.ip_address(host)),))
        except ValueError:
            pass
        cached = self._resolved.get(host)
        if cached is None or time.monotonic() - cached[0] >= _TTL_SECS:
            self._refresh(host)
            cached = self._resolved.get(host)
        return cached[1] if cached is not None else frozenset((host,))

    def _refresh(self, host: str) -> None:
        """Resolve `host` off the serving loop (in its resolver thread); inline only where no
        loop runs, so nothing waits on it."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            try:
                infos: Sequence[Any] = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
            except OSError:
                infos = ()
            self._store(host, infos)
            return
        if host in self._refreshing:
            return
        self._refreshing.add(host)
        task = loop.create_task(self._resolve(loop, host))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _resolve(self, loop: asyncio.AbstractEventLoop, host: str) -> None:
        try:
            infos: Sequence[Any] = await loop.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
        except OSError:
            infos = ()
        finally:
            self._refreshing.discard(host)
        self._store(host, infos)

    def _store(self, host: str, infos: Sequence[Any]) -> None:
        found = {host}  # a hint may name the host itself
        for info in infos:
            # An IPv6 link-local address carries its zone (`fe80::1%eth0`): the address alone.
            text = str(info[4][0]).partition("%")[0]
            try:
                found.add(str(ipaddress.ip_address(text)))
            except ValueError:
                continue
        if host not in self._resolved and len(self._resolved) >= _MAX_NAMES:
            oldest = min(self._resolved, key=lambda name: self._resolved[name][0])
            del self._resolved[oldest]
        self._resolved[host] = (time.monotonic(), frozenset(found))
