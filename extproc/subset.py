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

Resolving a hostname blocks, so each name's addresses are kept for `_TTL_SECS`; workers declared
by IP (every gateway's) never resolve anything. A name that does not resolve has no address and
matches nothing.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import Iterable

from picker.registry import Worker

__all__ = ["SubsetMatcher"]

_TTL_SECS = 60.0


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
        now = time.monotonic()
        cached = self._resolved.get(host)
        if cached is not None and now - cached[0] < _TTL_SECS:
            return cached[1]
        try:
            infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
            found = frozenset(str(ipaddress.ip_address(info[4][0])) for info in infos)
        except (OSError, ValueError):
            found = frozenset()
        self._resolved[host] = (now, found | {host})  # a hint may name the host itself
        return self._resolved[host][1]
