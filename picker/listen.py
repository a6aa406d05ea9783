"""Listening: the settings every server shares (host, port, TLS), and sockets that fail clearly.

gRPC and uvicorn both report a busy port badly: gRPC (with its default SO_REUSEPORT) shares
the port with the process already there, and uvicorn logs a traceback after the picker has
said it is serving. Binding here first turns both into an OSError naming what and where,
in one line.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from pathlib import Path

from pydantic import Field, field_validator, model_validator

from picker.strict import StrictModel

__all__ = ["ListenConfig", "TlsConfig", "check_free", "listen_socket"]


class TlsConfig(StrictModel):
    """Serve TLS; with `client_ca_file`, require client certificates signed by it (mTLS)."""

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None

    @model_validator(mode="after")
    def _files_exist(self) -> TlsConfig:
        for name in ("cert_file", "key_file", "client_ca_file"):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                raise ValueError(f"{name} {path} does not exist")
        return self


# One label of a host name: letters, digits, hyphens and (container runtimes' service names)
# underscores, not starting or ending with a hyphen.
_LABEL = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")


class ListenConfig(StrictModel):
    host: str = "127.0.0.1"
    port: int = Field(ge=0, le=65535)
    tls: TlsConfig | None = None

    @field_validator("host")
    @classmethod
    def _an_address_or_a_name(cls, host: str) -> str:
        """Checked here, so that a typo is named as one rather than as the bind failing, or as
        a check on the address it was meant to be (a non-loopback admin needing a token)."""
        if not host:  # every interface, as bind takes it
            return host
        try:
            ipaddress.ip_address(host)
        except ValueError:
            labels = host.removesuffix(".").split(".")
            if len(host) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
                hint = " (an IPv6 address goes without brackets)" if host.startswith("[") else ""
                raise ValueError(f"{host[:100]!r} is not an IP address or a host name{hint}"
                                 ) from None
        return host


def listen_socket(host: str, port: int, what: str) -> socket.socket:
    """A bound, listening TCP socket (no SO_REUSEPORT), or OSError('<what> cannot listen...')."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        # SO_REUSEADDR only lets a restart bind over TIME_WAIT; it never shares a live port.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(1024)
    except OSError as exc:
        sock.close()
        raise OSError(f"{what} cannot listen on {host}:{port}: {exc.strerror}") from exc
    return sock


def check_free(host: str, port: int, what: str) -> None:
    """Raise the same one-line OSError if host:port is taken (port 0 is always free)."""
    if port:
        listen_socket(host, port, what).close()
