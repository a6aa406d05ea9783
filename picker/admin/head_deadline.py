"""uvicorn's h11 protocol with a deadline for reading each request, head and body.

uvicorn (0.55) closes an idle keep-alive connection `timeout_keep_alive` after a response, but
a connection that sends nothing, or part of a request line, stays open for ever: its keep-alive
timer starts only after a response, and is cancelled by the first byte of the next request.
Half-open connections held the admin port for 150 s and more (issue 30); so did a request whose
body stopped short of its content-length. Here the request, head and body, must be complete
within `secs` of the connection opening, or of the first byte after a response (the admin API
takes bodies of at most 64 KiB).
"""

from __future__ import annotations

import asyncio

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["head_deadline_protocol"]

# The client's side of a request still being read: its head (IDLE), or its body.
_READING = (h11.IDLE, h11.SEND_BODY)


class _HeadDeadline(H11Protocol):
    head_timeout_secs = 10.0

    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state in _READING:  # bytes of a request, not yet all of it
            self._arm()
        else:
            self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._head_timer is None and not self.transport.is_closing():
            self._head_timer = self.loop.call_later(self.head_timeout_secs, self._expired)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _expired(self) -> None:
        self._head_timer = None
        if self.conn.their_state in _READING and not self.transport.is_closing():
            self.transport.close()


def head_deadline_protocol(secs: float) -> type[H11Protocol]:
    """The protocol class to give uvicorn.Config(http=...)."""
    return type("HeadDeadlineH11Protocol", (_HeadDeadline,), {"head_timeout_secs": secs})
