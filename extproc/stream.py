"""One ext_proc stream = one HTTP request: the protocol state machine, free of gRPC.

Envoy sends request headers, then the body (whole in BUFFERED mode, in chunks in
FULL_DUPLEX_STREAMED mode), maybe trailers; the picker routes once the body is complete. The gRPC
server feeds messages in and writes out whatever `handle` returns; tests and fuzzers drive the
same object directly.

The stream stays open until the downstream request is over (Envoy half-closes it when the
upstream response completes, and cancels it on a client reset), so `close` is where the
in-flight slot is released: no message per streamed token is needed.
"""

from __future__ import annotations

import enum
import time

from extproc import codec
from extproc._pb import ext_proc_pb2 as pb
from picker.access_log import AccessEntry, AccessLog
from picker.decisions import explain_line
from picker.errors import BodyTooLarge, InvalidRequest, ProxyMisconfigured, RequestError
from picker.leases import Lease
from picker.model_list import model_object, models_path_id
from picker.openai_body import parse_request
from picker.request import RoutingRequest
from picker.router import STRATEGY_HEADER
from picker.runtime import PickerRuntime

__all__ = ["RequestStream"]

_NO_RESPONSES: list[pb.ProcessingResponse] = []


class _Mode(enum.Enum):
    """How Envoy delivers the body, which decides when and how the picker may answer."""

    BUFFERED = "buffered"  # headers answered at once; whole body in one message
    DUPLEX = "duplex"  # FULL_DUPLEX_STREAMED: answer headers after the body, echo the body
    UNSUPPORTED = "unsupported"  # STREAMED, BUFFERED_PARTIAL: no complete body to route on


def _mode_of(config: pb.ProtocolConfiguration) -> _Mode:
    body_mode = config.request_body_mode
    if body_mode == pb.FULL_DUPLEX_STREAMED:
        return _Mode.DUPLEX
    # BUFFERED, or an Envoy too old to send protocol_config (it then says NONE).
    if body_mode in (pb.BUFFERED, pb.NONE):
        return _Mode.BUFFERED
    return _Mode.UNSUPPORTED


class RequestStream:
    __slots__ = (
        "_runtime", "_max_body", "_mode", "_headers", "_chunks", "_size", "_lease",
        "_finished", "_upstream_status", "_pending", "_access", "_started", "_model",
    )

    def __init__(self, runtime: PickerRuntime, max_body_bytes: int,
                 access: AccessLog | None = None) -> None:
        self._runtime = runtime
        self._max_body = max_body_bytes
        self._access = access
        self._started = time.monotonic()
        self._model = ""
        self._mode = _Mode.BUFFERED
        self._headers: dict[str, str] | None = None
        self._chunks: list[bytes] = []
        self._size = 0
        self._lease: Lease | None = None
        self._finished = False  # a routing answer or local reply has been sent
        self._upstream_status = 0
        self._pending: tuple[RoutingRequest, bytes, bool, bool] | None = None

    @property
    def lease(self) -> Lease | None:
        return self._lease

    @property
    def pending(self) -> bool:
        """The body is complete and routing has an awaited step (remote tokenizer, admission
        queue): the caller awaits `finish()` for the routing answer."""
        return self._pending is not None

    async def finish(self) -> list[pb.ProcessingResponse]:
        assert self._pending is not None
        request, body, end_of_stream, ack_trailers = self._pending
        self._pending = None
        try:
            lease = await self._runtime.route(request)
        except RequestError as error:
            return self._reject(error)
        return self._answer(lease, body, end_of_stream, ack_trailers)

    def handle(self, message: pb.ProcessingRequest) -> list[pb.ProcessingResponse]:
        """Responses to send for one incoming message, in order (possibly none yet)."""
        kind = message.WhichOneof("request")
        if kind == "request_headers":
            return self._on_headers(message)
        if kind == "request_body":
            return self._on_body(message.request_body)
        if kind == "request_trailers":
            return self._on_trailers()
        if kind == "response_headers":
            self._on_response_headers(message.response_headers)
            return [codec.continue_response_headers(self._explanation())]
        if kind == "response_body":
            response = pb.ProcessingResponse()
            response.response_body.response.SetInParent()
            return [response]
        if kind == "response_trailers":
            response = pb.ProcessingResponse()
            response.response_trailers.SetInParent()
            return [response]
        return _NO_RESPONSES  # an empty oneof: nothing to answer

    def close(self, cancelled: bool) -> None:
        """The stream ended; release the slot with the best outcome we know of."""
        if self._lease is None:
            return
        # Once response headers were seen, Envoy may reset rather than half-close the stream
        # when it has nothing more to send; the status, not the way the stream ended, decides.
        if self._upstream_status >= 500:
            outcome = "upstream_error"
        elif self._upstream_status or not cancelled:
            outcome = "completed"
        else:
            outcome = "cancelled"
        if self._lease.release(outcome) and self._access is not None:
            self._log(outcome, self._upstream_status or None, self._lease)

    # -- request path -----------------------------------------------------------------------

    def _on_headers(self, message: pb.ProcessingRequest) -> list[pb.ProcessingResponse]:
        if self._headers is not None or self._finished:
            return self._protocol_error("request headers sent twice")
        self._mode = _mode_of(message.protocol_config)
        self._headers = codec.headers_to_dict(message.request_headers.headers)
        if self._headers.get(":method") == "GET":
            model_id = models_path_id(self._headers.get(":path", ""))
            if model_id is not None:
                return self._list_models(model_id)
        if message.request_headers.end_of_stream:
            return self._route()  # no body: parse_request names what is missing
        if self._mode is _Mode.UNSUPPORTED:
            return self._reject(ProxyMisconfigured(
                "the ext_proc filter's request_body_mode must be BUFFERED or FULL_DUPLEX_STREAMED"
            ))
        return [codec.continue_headers()] if self._mode is _Mode.BUFFERED else _NO_RESPONSES

    def _on_body(self, body: pb.HttpBody) -> list[pb.ProcessingResponse]:
        if self._headers is None or self._finished:
            return self._protocol_error("request body outside a request")
        self._size += len(body.body)
        if self._size > self._max_body:
            return self._reject(
                BodyTooLarge(f"request body exceeds the {self._max_body} byte limit")
            )
        self._chunks.append(body.body)
        # BUFFERED mode delivers the whole body in one message (end_of_stream is false only
        # when trailers follow), so route on it; in duplex mode wait for the last chunk.
        if body.end_of_stream or self._mode is _Mode.BUFFERED:
            return self._route(end_of_stream=body.end_of_stream)
        return _NO_RESPONSES

    def _on_trailers(self) -> list[pb.ProcessingResponse]:
        if self._headers is None:
            return self._protocol_error("request trailers outside a request")
        if self._lease is not None:
            return [codec.continue_trailers()]
        if self._finished:
            return _NO_RESPONSES
        return self._route(end_of_stream=False, ack_trailers=True)

    def _route(self, end_of_stream: bool = True,
               ack_trailers: bool = False) -> list[pb.ProcessingResponse]:
        assert self._headers is not None
        body = b"".join(self._chunks)
        self._chunks.clear()
        try:
            request = parse_request(self._headers.get(":path", ""), body, self._headers)
        except RequestError as error:
            return self._reject(error)
        self._model = request.model
        if self._runtime.awaits:
            self._pending = (request, body, end_of_stream, ack_trailers)
            return _NO_RESPONSES
        try:
            lease = self._runtime.route_sync(request)
        except RequestError as error:
            return self._reject(error)
        return self._answer(lease, body, end_of_stream, ack_trailers)

    def _answer(self, lease: Lease, body: bytes, end_of_stream: bool,
                ack_trailers: bool) -> list[pb.ProcessingResponse]:
        self._lease = lease
        self._finished = True
        trailers = [codec.continue_trailers()] if ack_trailers else []
        spec = lease.worker.spec
        forward = lease.forward
        route = codec.Route(
            lease.worker.host_port, spec.dp_rank,
            None if spec.api_key is None else spec.api_key.get_secret_value(),
            () if forward is None else forward.headers,
        )
        rewritten = None if forward is None else forward.body
        if self._mode is _Mode.DUPLEX:
            return [*codec.route_streamed(route, rewritten or body, end_of_stream), *trailers]
        return [codec.route_buffered(route, rewritten), *trailers]

    def _list_models(self, model_id: str) -> list[pb.ProcessingResponse]:
        try:
            body = model_object(self._runtime.registry.workers(), model_id)
        except RequestError as error:
            return self._reject(error)
        self._finished = True
        return [codec.immediate_json(body)]

    def _reject(self, error: RequestError) -> list[pb.ProcessingResponse]:
        self._finished = True
        self._runtime.reject(error)
        if self._access is not None:
            self._log("rejected", error.status, None)
        return [codec.immediate_error(error)]

    def _log(self, outcome: str, status: int | None, lease: Lease | None) -> None:
        assert self._access is not None
        headers = self._headers or {}
        choice = None if lease is None else lease.choice
        self._access.record(AccessEntry(
            request_id=headers.get("x-request-id", ""), model=self._model,
            policy=choice.policy if choice is not None
            else headers.get(STRATEGY_HEADER) or self._runtime.router.default_policy,
            worker=None if choice is None else choice.worker.id,
            match=None if choice is None else choice.match,
            outcome=outcome, status=status,
            duration_ms=(time.monotonic() - self._started) * 1000.0,
        ))

    def _protocol_error(self, what: str) -> list[pb.ProcessingResponse]:
        """Envoy never does this; a broken or hostile client of the gRPC port might."""
        if self._finished:
            return _NO_RESPONSES
        return self._reject(InvalidRequest(f"ext_proc protocol error: {what}"))

    # -- response path ----------------------------------------------------------------------

    def _explanation(self) -> str | None:
        """The explain header's line, when allowed and asked for (picker.decisions)."""
        if self._lease is None or self._headers is None:
            return None
        return explain_line(self._runtime.config.explain, self._headers,
                            self._lease.choice.decision)

    def _on_response_headers(self, headers: pb.HttpHeaders) -> None:
        status = codec.headers_to_dict(headers.headers).get(":status", "")
        self._upstream_status = int(status) if status.isdigit() else 0
