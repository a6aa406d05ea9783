"""The ext_authz HTTP service: a lean HTTP/1.1 server on asyncio's Protocol API.

Its only client is Envoy's ext_authz filter, which sends one complete request at a time per
connection (Content-Length framed; keep-alive). A general framework (uvicorn + ASGI, h11) costs
more per request than the routing decision itself, which is the point of this mode; so this
parses just what that client sends and answers anything else with a 400 and closes.

A request must arrive whole within `head_timeout_secs` of its first byte (or of the connection
opening): a half-open connection, or one that stops mid-request, is closed rather than held
(issue 30). Between requests a connection may idle for as long as Envoy's pool keeps it.
"""

from __future__ import annotations

import asyncio
import socket
from ssl import SSLContext
from typing import cast

from authz.check import Answer, Checker
from picker.errors import InvalidRequest, RequestError

__all__ = ["serve_http"]

_HEAD_LIMIT = 64 * 1024
# Envoy sends each check request whole at once; ten seconds covers any scheduling hiccup.
HEAD_TIMEOUT_SECS = 10.0
# A connection with no request for this long is closed (else anyone reaching the port could
# hold descriptors for ever); envoy-authz.yaml closes its pooled ones after 60 s, first.
IDLE_TIMEOUT_SECS = 120.0
_REASONS = {200: b"OK", 400: b"Bad Request", 404: b"Not Found", 405: b"Method Not Allowed",
            413: b"Payload Too Large",
            415: b"Unsupported Media Type", 429: b"Too Many Requests",
            500: b"Internal Server Error", 503: b"Service Unavailable"}


def _encode(answer: Answer) -> bytes:
    lines = [b"HTTP/1.1 %d %s" % (answer.status, _REASONS.get(answer.status, b"Status"))]
    lines.extend(f"{name}: {value}".encode() for name, value in answer.headers)
    lines.append(b"content-length: %d" % len(answer.body))
    return b"\r\n".join(lines) + b"\r\n\r\n" + answer.body


class _Connection(asyncio.Protocol):
    """One keep-alive connection from Envoy; requests are answered in order."""

    def __init__(self, checker: Checker, awaits: bool,
                 head_timeout_secs: float = HEAD_TIMEOUT_SECS,
                 idle_timeout_secs: float = IDLE_TIMEOUT_SECS) -> None:
        self._checker = checker
        self._awaits = awaits
        self._head_timeout_secs = head_timeout_secs
        self._idle_timeout_secs = idle_timeout_secs
        self._head_timer: asyncio.TimerHandle | None = None
        self._timing_head = False  # the timer running is the head timeout, not the idle one
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None
        self._busy = False  # an awaited check is running: later bytes wait in the buffer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._watch_head(waiting=True)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._watch_head(waiting=False)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if not self._busy:
            self._drain()
        self._watch_head(waiting=bool(self._buffer) and not self._busy)

    def _watch_head(self, waiting: bool) -> None:
        """One deadline at a time: the head timeout while part of a request waits for the
        rest (from its first byte: dribbling bytes does not extend it), the idle timeout while
        nothing is asked, none while a check runs."""
        if waiting and self._timing_head and self._head_timer is not None:
            return
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        if self._transport is None or self._busy:
            return
        self._timing_head = waiting
        delay = self._head_timeout_secs if waiting else self._idle_timeout_secs
        self._head_timer = asyncio.get_running_loop().call_later(delay, self._head_expired)

    def _head_expired(self) -> None:
        self._head_timer = None
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    def _drain(self) -> None:
        while self._transport is not None and not self._busy:
            request = self._next_request()
            if request is None:
                return
            path, headers, body = request
            if self._awaits:
                self._busy = True
                task = asyncio.ensure_future(self._checker.check_async(path, headers, body))
                task.add_done_callback(self._answered)
                return
            self._transport.write(_encode(self._checker.check(path, headers, body)))

    def _answered(self, task: asyncio.Future[Answer]) -> None:
        self._busy = False
        if self._transport is None or task.cancelled():
            return
        self._transport.write(_encode(task.result()))
        self._drain()
        self._watch_head(waiting=bool(self._buffer) and not self._busy)

    def _next_request(self) -> tuple[str, dict[str, str], bytes] | None:
        """Pop one complete request off the buffer; None until one is there."""
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buffer) > _HEAD_LIMIT:
                self._fail("request head too large")
            return None
        lines = bytes(self._buffer[:end]).decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            self._fail("not an HTTP/1.1 request line")
            return None
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                self._fail("malformed header line")
                return None
            headers[name.strip().lower()] = value.strip()
        if "transfer-encoding" in headers:
            self._fail("chunked check requests are not supported: Envoy sends Content-Length")
            return None
        length_text = headers.get("content-length", "0")
        if not length_text.isdigit():
            self._fail("bad content-length")
            return None
        start = end + 4
        length = int(length_text)
        if length > self._checker.max_body_bytes:
            # Checks come through Envoy's max_request_bytes, but GET /v1/models is routed here
            # from clients directly: no body is buffered past the limit.
            self._refuse(self._checker.too_large())
            return None
        if len(self._buffer) < start + length:
            return None
        body = bytes(self._buffer[start:start + length])
        del self._buffer[:start + length]
        # The picker reads headers as the client sent them, pseudo-headers included.
        headers[":method"] = parts[0]
        headers[":path"] = parts[1]
        return parts[1], headers, body

    def _fail(self, why: str) -> None:
        self._refuse(InvalidRequest(f"authz check request: {why}"))

    def _refuse(self, error: RequestError) -> None:
        """Answer with `error` and close: the rest of the connection's bytes are unframed."""
        assert self._transport is not None
        self._transport.write(_encode(Answer(error.status, (("content-type", "application/json"),
                                                             ("connection", "close")),
                                             error.to_json())))
        self._transport.close()
        self._transport = None


async def serve_http(checker: Checker, awaits: bool, sock: socket.socket,
                     head_timeout_secs: float = HEAD_TIMEOUT_SECS,
                     idle_timeout_secs: float = IDLE_TIMEOUT_SECS,
                     ssl: SSLContext | None = None) -> asyncio.Server:
    """Serving on a listening socket (picker.listen) until the returned server is closed;
    over TLS with `ssl` (extproc.tls). A handshake must complete within the head timeout."""
    loop = asyncio.get_running_loop()
    return await loop.create_server(
        lambda: _Connection(checker, awaits, head_timeout_secs, idle_timeout_secs), sock=sock,
        ssl=ssl, ssl_handshake_timeout=None if ssl is None else head_timeout_secs)
