"""gRPC's length-prefixed messages on an HTTP/2 body, both ways.

Each message is a 1-byte compressed flag, a 4-byte big-endian length and the message bytes
(grpc/grpc doc/PROTOCOL-HTTP2.md, "Length-Prefixed-Message"). The picker sends uncompressed
messages and asks for none back (no `grpc-accept-encoding`), so a compressed one is an engine
fault. A proxy delivers the response body in arbitrary pieces: `FrameReader` keeps the partial
message between them.
"""

from __future__ import annotations

import struct

__all__ = ["FrameReader", "FramingError", "frame"]

_HEADER = struct.Struct(">BI")


class FramingError(ValueError):
    """The engine's body is not a sequence of uncompressed gRPC messages."""


def frame(message: bytes) -> bytes:
    return _HEADER.pack(0, len(message)) + message


class FrameReader:
    """Whole messages out of body pieces, in order."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = bytearray()

    @property
    def partial(self) -> bool:
        """Bytes of an incomplete message are held (the body ended mid-message if so)."""
        return bool(self._buffer)

    def feed(self, piece: bytes) -> list[bytes]:
        self._buffer += piece
        out: list[bytes] = []
        while len(self._buffer) >= _HEADER.size:
            compressed, length = _HEADER.unpack_from(self._buffer)
            if compressed:
                raise FramingError("the engine sent a compressed gRPC message, not asked for")
            end = _HEADER.size + length
            if len(self._buffer) < end:
                break
            out.append(bytes(self._buffer[_HEADER.size:end]))
            del self._buffer[:end]
        return out
