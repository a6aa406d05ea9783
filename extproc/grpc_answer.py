"""The response side of a request the picker transcoded for a gRPC worker (picker.grpc_route).

Envoy passes the engine's HTTP/2 gRPC response through ext_proc with the response body
FULL_DUPLEX_STREAMED (what gateways configure): headers, the length-prefixed
GenerateResponses in arbitrary pieces, then trailers carrying `grpc-status`. Each piece is
answered with the OpenAI bytes it completes. The headers answer says what the client gets:
a streamed request's at once (200, text/event-stream; a later failure is an error event), a
non-streamed request's held until the body or the status decides between the JSON document
(200) and an OpenAI error with the status it maps to (duplex mode lets the answer to the
headers come after body chunks, as the request side does). An engine that fails before
answering sends its status in the headers alone ("Trailers-Only", grpc
doc/PROTOCOL-HTTP2.md): that becomes a local reply with the error.

What is not gRPC (Envoy's own reply when the engine is unreachable, say) passes unchanged.
"""

from __future__ import annotations

from urllib.parse import unquote

from extproc import codec
from extproc._pb import ext_proc_pb2 as pb
from picker.grpc_route.answer import http_status
from picker.grpc_route.transcoder import GrpcTranscoder

__all__ = ["GrpcAnswer"]

# What the client must not see of the engine's gRPC response.
_GRPC_HEADERS = ("grpc-status", "grpc-message", "grpc-encoding", "grpc-accept-encoding",
                 "grpc-status-details-bin", "content-length")


class GrpcAnswer:
    """One transcoded response's state between ext_proc messages."""

    __slots__ = ("_transcoder", "_held", "_passthrough", "status")

    def __init__(self, transcoder: GrpcTranscoder) -> None:
        self._transcoder = transcoder
        self._held = False  # the headers answer waits for the body (non-streamed)
        self._passthrough = False  # the upstream's answer is not gRPC: hand it on unchanged
        self.status = 0  # the HTTP status the client gets (0: not known yet)

    @property
    def abandoned(self) -> bool:
        """The engine's answer was neither whole nor failed when the stream ended: the client
        went away (or the proxy gave up) while the engine still generates."""
        return not self._passthrough and not self._transcoder.answer.over

    @property
    def cut_short(self) -> bool:
        """A stop string ended the client's answer; the engine still generates."""
        return not self._passthrough and self._transcoder.answer.cut_short

    @property
    def content_type(self) -> str:
        return self._transcoder.answer.content_type

    def headers(self, headers: dict[str, str], end_of_stream: bool
                ) -> list[pb.ProcessingResponse]:
        answer = self._transcoder.answer
        if headers.get(":status") != "200" or \
                not headers.get("content-type", "").startswith("application/grpc"):
            self._passthrough = True
            status = headers.get(":status", "")
            self.status = int(status) if status.isdigit() else 502
            return [codec.continue_response_headers()]
        if "grpc-status" in headers:  # Trailers-Only: the engine failed before answering
            body = answer.end(int(headers["grpc-status"]), _message(headers), document=True)
            self.status = _failure_status(headers)
            return [codec.immediate_reply(self.status, "application/json", body,
                                          "llm_picker_engine_error")]
        if end_of_stream:
            body = answer.end(0, "", document=True)
            self.status = 502
            return [codec.immediate_reply(self.status, "application/json", body,
                                          "llm_picker_engine_error")]
        if self._transcoder.answer.streamed:
            self.status = 200
            return [self._headers_answer(200)]
        self._held = True
        return []

    def body(self, chunk: bytes, end_of_stream: bool
             ) -> tuple[bytes, list[pb.ProcessingResponse]]:
        """The bytes the client gets for this piece, and the answers that carry them."""
        if self._passthrough:
            return chunk, codec.echo_response_body(chunk, end_of_stream)
        answer = self._transcoder.answer
        out = answer.feed(chunk)
        if end_of_stream:  # no trailers: no status either
            out += answer.end(0, "")
            self.status = self.status or 502
        return out, self._send(out, end_of_stream)

    def trailers(self, trailers: dict[str, str]
                 ) -> tuple[bytes, list[pb.ProcessingResponse]]:
        if self._passthrough:
            return b"", [codec.continue_response_trailers()]
        status = trailers.get("grpc-status", "")
        out = self._transcoder.answer.end(int(status) if status.isdigit() else 2,
                                          _message(trailers))
        if out and self._held:
            self.status = _failure_status(trailers)
        return out, [*self._send(out, False),
                     codec.continue_response_trailers(remove=_GRPC_HEADERS)]

    def _send(self, out: bytes, end_of_stream: bool) -> list[pb.ProcessingResponse]:
        """`out` as body mutations - after the held headers answer, which Envoy must get
        first: until the body decides the status, nothing is sent (a non-streamed answer has
        no bytes before its end anyway)."""
        if self._held:
            answer = self._transcoder.answer
            if not (answer.complete or self.status or end_of_stream):
                return []
            self._held = False
            self.status = self.status or 200
            return [self._headers_answer(self.status),
                    *codec.echo_response_body(out, end_of_stream)]
        return codec.echo_response_body(out, end_of_stream)

    def _headers_answer(self, status: int) -> pb.ProcessingResponse:
        return codec.continue_response_headers(
            {":status": str(status), "content-type": self.content_type}, remove=_GRPC_HEADERS)


def _message(headers: dict[str, str]) -> str:
    """grpc-message is percent-encoded (grpc doc/PROTOCOL-HTTP2.md "Status-Message")."""
    return unquote(headers.get("grpc-message", ""))


def _failure_status(headers: dict[str, str]) -> int:
    status = headers.get("grpc-status", "")
    return http_status(int(status)) if status.isdigit() else 502
