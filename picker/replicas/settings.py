"""`replicas:` settings: where this replica listens for peers' picks and how it finds peers."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, Field, model_validator

from picker.strict import StrictModel
from picker.workers import Port

__all__ = ["PeerDnsSettings", "ReplicaSettings", "host_port"]


class PeerDnsSettings(StrictModel):
    """Peers from a name (the replicas' headless Service), polled like DNS worker discovery.

    The system resolver (getaddrinfo) is enough here: replicas need no SRV records, and the
    optional DNS client stays optional."""

    name: str = Field(min_length=1, description="e.g. llm-picker-peers.default.svc")
    port: Port
    interval_secs: float = Field(default=10.0, gt=0)


class ReplicaSettings(StrictModel):

    listen: HostPort = Field(description="host:port peers connect to, e.g. 0.0.0.0:9004")
    # Every replica may list them all, itself included: a link that reaches this replica is
    # recognised by its greeting and left idle.
    peers: list[HostPort] = Field(default_factory=list, max_length=64)
    dns: PeerDnsSettings | None = None
    # Picks waiting for the sender task; beyond this, picks are dropped (and counted) rather
    # than slowing routing.
    queue: int = Field(default=4096, ge=1, le=1_000_000)
    # Bytes a slow peer's connection may buffer before further picks to it are dropped.
    peer_buffer_bytes: int = Field(default=4 * 1024 * 1024, ge=64 * 1024)
    connect_timeout_secs: float = Field(default=2.0, gt=0)
    # Reconnection backoff doubles from 0.1 s up to this.
    max_backoff_secs: float = Field(default=5.0, ge=0.1)

    @model_validator(mode="after")
    def _one_way_to_find_peers(self) -> ReplicaSettings:
        if self.peers and self.dns is not None:
            raise ValueError("set peers (host:port list) or dns (name, port), not both")
        if not self.peers and self.dns is None:
            raise ValueError("set peers (a host:port list) or dns (name, port) to find the "
                             "other replicas")
        return self


def host_port(text: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port` -> (host, port); ValueError naming the text."""
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        number = int(port)
    except ValueError:
        number = 0
    if not sep or not host or not 0 < number < 65536:
        raise ValueError(f"{text!r} is not host:port")
    return host, number


def _checked(text: str) -> str:
    host_port(text)
    return text


# A `host:port` setting, checked where it is read.
HostPort = Annotated[str, AfterValidator(_checked)]
