"""Listening sockets that fail with one clear line when the address is taken.

gRPC and uvicorn both report a busy port badly: gRPC (with its default SO_REUSEPORT) shares
the port with the process already there, and uvicorn logs a traceback after the picker has
said it is serving. Binding here first turns both into an OSError naming what and where.
"""

from __future__ import annotations

import socket

__all__ = ["check_free", "listen_socket"]


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
