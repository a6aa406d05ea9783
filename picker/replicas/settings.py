"""`replicas:` settings: where this replica listens for peers' picks and how it finds peers."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, Field, SecretStr, model_validator

from picker.errors import ConfigError
from picker.fleet.worker_spec import Port
from picker.strict import StrictModel

__all__ = ["MIN_SECRET_CHARS", "PeerDnsSettings", "ReplicaSettings", "check_hash_seed",
           "host_port"]

# A shared secret guessable offline from one recorded handshake is no secret: 16 characters at
# least (`openssl rand -hex 16` gives 32).
MIN_SECRET_CHARS = 16
_LOOPBACK = ("127.0.0.1", "::1", "localhost")


class PeerDnsSettings(StrictModel):
    """Peers from a name (the replicas' headless Service), polled like DNS worker discovery.

    The system resolver (getaddrinfo) is enough here: replicas need no SRV records, and the
    optional DNS client stays optional."""

    name: str = Field(min_length=1, description="e.g. llm-picker-peers.default.svc")
    port: Port
    interval_secs: float = Field(default=10.0, gt=0)


class ReplicaSettings(StrictModel):
    """`secret` (env LLM_PICKER_REPLICAS__SECRET) or `secret_file`: what every replica shares
    to authenticate its links (picker/replicas/wire.py); needed when `listen` is beyond
    loopback, since a link accepts picks that steer routing."""

    listen: HostPort = Field(description="host:port peers connect to, e.g. 0.0.0.0:9004")
    secret: SecretStr | None = Field(default=None, min_length=MIN_SECRET_CHARS)
    secret_file: Path | None = None
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
        if self.secret is not None and self.secret_file is not None:
            raise ValueError("set secret or secret_file, not both")
        if self.secret_file is not None:
            self.key()  # unreadable or too short: refused now, not at the first link
        elif self.secret is None and host_port(self.listen)[0] not in _LOOPBACK:
            raise ValueError(f"listening on {self.listen} needs replicas.secret (env "
                             "LLM_PICKER_REPLICAS__SECRET) or replicas.secret_file: without "
                             "one, anyone reaching the port could feed this replica picks")
        return self

    def key(self) -> bytes:
        """The shared secret's bytes (empty without one: links on loopback only)."""
        if self.secret is not None:
            return self.secret.get_secret_value().encode()
        if self.secret_file is None:
            return b""
        try:
            text = self.secret_file.read_text().strip()
        except OSError as exc:
            raise ValueError(f"secret_file {self.secret_file}: {exc.strerror}") from exc
        if len(text) < MIN_SECRET_CHARS:
            raise ValueError(f"secret_file {self.secret_file} holds under {MIN_SECRET_CHARS} "
                             "characters")
        return text.encode()


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


def check_hash_seed(env: Mapping[str, str]) -> None:
    """ConfigError unless `env` fixes PYTHONHASHSEED: replicas compare block hashes, which are
    Python's salted string hash (`check-config` asks it of the environment it is given)."""
    if env.get("PYTHONHASHSEED", "random") == "random":
        raise ConfigError("replicas", "block hashes are Python's salted string hash: set "
                          "the same PYTHONHASHSEED (e.g. a random 32-bit number) in every "
                          "replica's environment")
