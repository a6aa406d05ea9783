"""Half-open and idle connections on the admin port of a real `llm-picker serve` are closed
within the configured bounds (issue 30): a connection that sends nothing, part of a request
line, or nothing more after a response."""

from __future__ import annotations

import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from picker_bench.stack import free_port, start_picker

HEADER_SECS, KEEP_ALIVE_SECS = 1.0, 1


@pytest.fixture(scope="module")
def admin_port() -> Iterator[int]:
    port = free_port()
    config = {"extproc": {"port": free_port()}, "workers": [],
              "admin": {"port": port, "header_timeout_secs": HEADER_SECS,
                        "keep_alive_timeout_secs": KEEP_ALIVE_SECS}}
    with tempfile.TemporaryDirectory() as tmp:
        picker = start_picker(config, Path(tmp))
        try:
            yield port
        finally:
            picker.stop()


def seconds_until_closed(sock: socket.socket, limit: float = 10.0) -> float:
    """How long until the server closes `sock` (reads and drops any response first)."""
    started = time.monotonic()
    sock.settimeout(limit)
    while sock.recv(65536):
        pass
    return time.monotonic() - started


@pytest.mark.parametrize("sent", [
    b"", b"GET /hea", b"GET /health HTTP/1.1\r\nhost: x\r\n",
    b'PATCH /workers/w HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{"prio'],
    ids=["nothing", "part of the request line", "headers not ended", "body cut short"])
def test_an_unfinished_request_is_closed_after_the_header_timeout(
        admin_port: int, sent: bytes) -> None:
    with socket.create_connection(("127.0.0.1", admin_port)) as sock:
        sock.sendall(sent)
        assert HEADER_SECS - 0.2 < seconds_until_closed(sock) < HEADER_SECS + 1.5


def test_idle_after_a_response_is_closed_after_keep_alive_and_a_new_partial_head_too(
        admin_port: int) -> None:
    with socket.create_connection(("127.0.0.1", admin_port)) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
        sock.settimeout(5)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
        assert seconds_until_closed(sock) < KEEP_ALIVE_SECS + 1.5
    with socket.create_connection(("127.0.0.1", admin_port)) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
        sock.settimeout(5)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
        sock.sendall(b"GET /he")  # before keep-alive runs out: now the head deadline runs
        assert seconds_until_closed(sock) < HEADER_SECS + 1.5
