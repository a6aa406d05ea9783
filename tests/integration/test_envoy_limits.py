"""Envoy's own limits in every shipped bootstrap, through the real binary (issue 30 items 3 and
13): request headers over the limits get a 431 in OpenAI's JSON shape (the ext_proc bootstraps
used to close the connection without a word), and a client that starts a request and goes
quiet is cut off within the header timeout (it used to stay connected for minutes)."""

from __future__ import annotations

import contextlib
import json
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from picker_bench.stack import Process, start_envoy
from tests.integration.test_control_headers import BOOTSTRAPS, with_picker_down

HEADER_TIMEOUT_SECS = 10.0  # request_headers_timeout in every bootstrap


@contextlib.contextmanager
def envoy_for(bootstrap: str) -> Iterator[tuple[Process, int]]:
    """The bootstrap running (no picker needed: Envoy answers these itself)."""
    with tempfile.TemporaryDirectory(prefix="llm-picker-limits-") as root:
        config, listen = with_picker_down(bootstrap, 1, Path(root))
        envoy = start_envoy(config, Path(root))
        try:
            yield envoy, listen
        finally:
            envoy.kill()


def exchange(port: int, request: bytes, timeout: float = 10.0) -> bytes:
    """Send raw bytes, read until Envoy closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
        return received


@pytest.mark.parametrize("bootstrap", BOOTSTRAPS)
@pytest.mark.parametrize("headers", [
    b"x-big: " + b"a" * 100_000 + b"\r\n",  # 100 KB in one header
    b"".join(b"x-h%d: v\r\n" % i for i in range(200)),  # more headers than allowed
], ids=["100KB", "200-headers"])
def test_headers_over_the_limits_get_a_431_json_error(bootstrap: str, headers: bytes) -> None:
    with envoy_for(bootstrap) as (_, port):
        reply = exchange(port, b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n" + headers
                         + b"content-type: application/json\r\ncontent-length: 2\r\n\r\n{}")
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431"), reply[:300]
    assert json.loads(body)["error"]["code"] == "headers_too_large"


def test_a_request_left_unfinished_is_closed_within_the_header_timeout() -> None:
    """Every bootstrap at once (one wait): a request line and one header, then nothing."""
    with contextlib.ExitStack() as stack:
        sockets = []
        for bootstrap in BOOTSTRAPS:
            _, port = stack.enter_context(envoy_for(bootstrap))
            sock = stack.enter_context(socket.create_connection(("127.0.0.1", port)))
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n")
            sockets.append((bootstrap, sock, time.monotonic()))
        closed = {}
        for bootstrap, sock, opened in sockets:
            sock.settimeout(HEADER_TIMEOUT_SECS + 5)
            with contextlib.suppress(ConnectionResetError):
                while sock.recv(65536):
                    pass
            closed[bootstrap] = time.monotonic() - opened
    print({name: round(secs, 1) for name, secs in closed.items()})
    assert all(secs < HEADER_TIMEOUT_SECS + 3 for secs in closed.values()), closed
