"""One ext_proc stream = one HTTP request: the protocol state machine, free of gRPC.

Envoy sends request headers, then the body (whole in BUFFERED mode, in chunks in
FULL_DUPLEX_STREAMED mode), maybe trailers; the picker routes once the body is complete. The gRPC
server feeds messages in and writes out whatever `handle` returns; tests and fuzzers drive the
same object directly.

The response side depends on what Envoy was told to send. Response headers give the status and,
with the Endpoint Picker Protocol's metadata, the endpoint that served (the lease moves there if
Envoy retried elsewhere). With a response body mode (FULL_DUPLEX_STREAMED, as gateways configure
it, or BUFFERED) every chunk passes by: the picker hands it back - as a streamed mutation in
duplex mode, the only answer that mode allows - and learns TTFT, chunk rate and usage from it
(picker.routing.response_stats). The in-flight slot is then released at the response's last chunk or
trailers. Without a response body mode the stream's end (`close`) is the only signal.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable

from extproc import codec
from extproc._pb import ext_proc_pb2 as pb
from extproc.grpc_answer import GrpcAnswer
from extproc.subset import SubsetMatcher
from picker.errors import (
    BodyTooLarge,
    FlowRefused,
    InvalidRequest,
    NoHealthyWorker,
    ProxyMisconfigured,
    RequestError,
)
from picker.grpc_route.abort import AbortCall
from picker.observe.access_log import AccessEntry, AccessLog
from picker.observe.decisions import EXPLAIN_HEADER
from picker.routing import control_headers
from picker.routing.contract import Picker
from picker.routing.destination import reach_headers
from picker.routing.gateway_probes import is_probe, probe_target
from picker.routing.leases import Lease
from picker.routing.model_list import model_object, models_path_id
from picker.routing.openai_body import api_of, parse_request
from picker.routing.outcome import Outcome
from picker.routing.request import RoutingRequest
from picker.routing.response_stats import ResponseObserver

__all__ = ["CONFORMANCE_SELECTION_HEADER", "CONFORMANCE_SERVED_HEADER", "RequestStream"]

_NO_RESPONSES: list[pb.ProcessingResponse] = []
# The Gateway API Inference Extension conformance suite steers requests with this header and
# reads the served endpoint back from the other; honoured only with extproc.conformance.
CONFORMANCE_SELECTION_HEADER = "test-epp-endpoint-selection"
CONFORMANCE_SERVED_HEADER = "x-conformance-test-served-endpoint"


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
        "_picker", "_fallbacks", "_conformance", "_max_body", "_mode", "_headers", "_chunks",
        "_size", "_lease", "_finished", "_upstream_status", "_pending", "_access", "_started",
        "_model", "_echo", "_sees_body", "_observer", "_subset", "_subsets", "_prefilled",
        "_grpc", "_abort", "_interrupt",
    )

    def __init__(self, picker: Picker, max_body_bytes: int,
                 access: AccessLog | None = None,
                 subsets: SubsetMatcher | None = None, fallbacks: int = 0,
                 conformance: bool = False,
                 abort: Callable[[str, AbortCall], None] | None = None,
                 interrupt: Callable[[pb.ProcessingResponse, Callable[[], None]], None]
                 | None = None) -> None:
        """`subsets`: the server's, shared by its streams (else one of this stream's own).
        `fallbacks` and `conformance`: extproc.fallbacks and extproc.conformance. `abort`:
        sends a gRPC worker's Abort (host:port, the engine's call) when a stop string ends
        the answer while the engine still generates. `interrupt`: from any thread, has a
        message Envoy did not ask for written on the stream (flow control ending the request,
        `flow.preempt`), then calls back on the stream's loop once it is written; without it
        the request cannot be preempted."""
        self._picker = picker
        self._fallbacks = fallbacks
        self._conformance = conformance
        self._subsets = subsets or SubsetMatcher()
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
        self._echo = False  # response body FULL_DUPLEX_STREAMED: hand every chunk back
        self._sees_body = False  # response body sent to us: its end is the request's end
        self._observer: ResponseObserver | None = None
        self._subset: list[str] | None = None  # the gateway's endpoint subset hint
        self._prefilled = False  # the lease heard of the response's first bytes
        self._grpc: GrpcAnswer | None = None  # a gRPC worker's answer, rewritten into OpenAI's
        self._abort = abort
        self._interrupt = interrupt

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
            allowed = self._allowed()
            lease = await self._picker.route(request, allowed, self._fallbacks)
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
        if kind == "response_body":
            return self._on_response_body(message.response_body)
        if kind == "response_headers":
            return self._on_response_headers(message)
        if kind == "response_trailers":
            if self._grpc is not None:
                out, responses = self._grpc.trailers(
                    codec.headers_to_dict(message.response_trailers.trailers))
                return self._on_grpc_response(out, responses, True)
            self._response_over()
            return [codec.continue_response_trailers()]
        return _NO_RESPONSES  # an empty oneof: nothing to answer

    @property
    def abandoned_generation(self) -> tuple[str, AbortCall] | None:
        """After `close`: a gRPC worker's generation the client left unfinished, as
        (worker host:port, its engine's Abort call); None otherwise."""
        lease = self._lease
        if self._grpc is None or lease is None or lease.transcoder is None \
                or not self._grpc.abandoned:
            return None
        return lease.worker.host_port, lease.transcoder.abort("client disconnected")

    def close(self, cancelled: bool) -> None:
        """The stream ended; release the slot with the best outcome we know of (a no-op when
        the response's end already released it)."""
        if self._lease is None:
            return
        if self._upstream_status >= 500:
            outcome = Outcome.UPSTREAM_ERROR
        elif self._sees_body and self._upstream_status:
            # The body's end would have released the slot: the response was cut short, by the
            # client going away or the upstream resetting mid-stream - unless all of it passed.
            complete = self._observer is not None and self._observer.complete
            outcome = Outcome.COMPLETED if complete else Outcome.CANCELLED
        elif self._upstream_status or not cancelled:
            # Without the body, Envoy may reset rather than half-close the stream once it has
            # nothing more to send; the status, not the way the stream ended, decides.
            outcome = Outcome.COMPLETED
        else:
            outcome = Outcome.CANCELLED
        self._release(outcome)

    def _release(self, outcome: Outcome) -> None:
        assert self._lease is not None
        if not self._lease.open:  # the response's end released it already
            return
        sample = self._observer.sample() if self._observer is not None else None
        if self._lease.release(outcome, sample) and self._access is not None:
            self._log(outcome, self._upstream_status or None, self._lease)

    # -- request path -----------------------------------------------------------------------

    def _on_headers(self, message: pb.ProcessingRequest) -> list[pb.ProcessingResponse]:
        if self._headers is not None or self._finished:
            return self._protocol_error("request headers sent twice")
        self._mode = _mode_of(message.protocol_config)
        response_mode = message.protocol_config.response_body_mode
        self._echo = response_mode == pb.FULL_DUPLEX_STREAMED
        self._sees_body = response_mode != pb.NONE
        self._subset = codec.metadata_strings(message, codec.SUBSET_NAMESPACE, codec.SUBSET_KEY)
        self._headers = codec.headers_to_dict(message.request_headers.headers)
        method, path = self._headers.get(":method", ""), self._headers.get(":path", "")
        if method in ("GET", "HEAD"):
            model_id = models_path_id(path)
            if model_id is not None:
                return self._list_models(model_id)
        if message.request_headers.end_of_stream:
            if is_probe(method, path):
                return self._probe()
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
            request = parse_request(self._headers.get(":path", ""), body, self._headers,
                                    answer_seen=self._sees_body)
        except RequestError as error:
            return self._reject(error)
        self._model = request.model
        if self._picker.awaits:
            self._pending = (request, body, end_of_stream, ack_trailers)
            return _NO_RESPONSES
        try:
            allowed = self._allowed()
            lease = self._picker.route_sync(request, allowed, self._fallbacks)
        except RequestError as error:
            return self._reject(error)
        return self._answer(lease, body, end_of_stream, ack_trailers)

    def _allowed(self) -> set[str] | None:
        """Worker ids the gateway's subset hint (and, in conformance mode, the test's steering
        header) allow; None when nothing restricts the candidates."""
        allowed: set[str] | None = None
        if self._subset is not None:
            allowed = self._subsets.allowed(self._picker.workers(), self._subset)
            if not allowed:
                raise NoHealthyWorker(f"none of the {len(self._subset)} endpoints in the "
                                      "gateway's subset hint is a worker of this picker")
        steering = (self._headers or {}).get(CONFORMANCE_SELECTION_HEADER)
        if steering and self._conformance:
            # Pod IPs in the suite; host:port works too (local tests share one IP).
            wanted = {part.strip() for part in steering.split(",")}
            steered = {w.id for w in self._picker.workers()
                       if w.host_port in wanted or w.host_port.rpartition(":")[0] in wanted}
            if steered:  # the suite's own picker ignores a header naming no endpoint it has
                allowed = steered if allowed is None else allowed & steered
        return allowed

    def _answer(self, lease: Lease, body: bytes, end_of_stream: bool,
                ack_trailers: bool) -> list[pb.ProcessingResponse]:
        if lease.transcoder is not None:
            if not self._echo:
                lease.release(Outcome.CANCELLED)
                return self._reject(ProxyMisconfigured(
                    f"model {self._model[:100]!r} is served by gRPC workers, whose answers the "
                    "picker rewrites: the ext_proc filter's response_body_mode must be "
                    "FULL_DUPLEX_STREAMED"))
            self._grpc = GrpcAnswer(lease.transcoder)
        self._lease = lease
        self._finished = True
        if self._interrupt is not None:
            lease.preemptible(self._end_early)
        trailers = [codec.continue_trailers()] if ack_trailers else []
        forward = lease.forward
        route = codec.Route(lease.destination, (*lease.headers, *self._path_fix()))
        rewritten = None if forward is None else forward.body
        if self._mode is _Mode.DUPLEX:
            return [*codec.route_streamed(route, rewritten or body, end_of_stream), *trailers]
        return [codec.route_buffered(route, rewritten), *trailers]

    def _end_early(self, error: FlowRefused) -> None:
        """Flow control ends the request to free its slot for a higher band: an immediate
        response Envoy did not ask for ends the HTTP request - a 503 `preempted` with
        Retry-After, or a reset stream if the answer had begun - and Envoy resets the
        upstream, which makes vLLM abort it (vllm/entrypoints/utils.py, `with_cancellation`).
        llm-d-router's evictor ends a request the same way (pkg/epp/flowcontrol/eviction/
        evictor.go, ImmediateResponseEvictor). The slot is released once Envoy has the
        message: a message that cannot be written leaves the request running, and counted.
        Called by flow control under its lock, from any thread: `interrupt` only schedules."""
        if self._lease is None or not self._lease.open or self._interrupt is None:
            return  # it ended meanwhile
        api = api_of((self._headers or {}).get(":path", ""))
        self._interrupt(codec.immediate_error(error, api is not None and api.anthropic),
                        self._preempted)

    def _preempted(self) -> None:
        if self._lease is not None and self._lease.open:
            self._release(Outcome.PREEMPTED)

    def _path_fix(self) -> tuple[tuple[str, str], ...]:
        """`/v1/chat/completions/` is routed as `/v1/chat/completions` (openai_body ignores
        trailing slashes, as llm-d-router's MatchPathSuffix does); the engine gets the path it
        serves too, since vLLM's and SGLang's FastAPI apps answer the slashed one with a 307
        redirect that OpenAI's SDKs do not follow. Otherwise the client's path goes on as sent
        (`/rerank` stays `/rerank`: engines serve different forms of one API)."""
        path, mark, query = (self._headers or {}).get(":path", "").partition("?")
        routed = path.rstrip("/")
        if path == routed:
            return ()
        return ((":path", routed + mark + query),)

    def _probe(self) -> list[pb.ProcessingResponse]:
        """A health probe through the gateway: to a routable worker, no lease
        (picker.routing.gateway_probes)."""
        try:
            worker = probe_target(self._picker.workers())
        except RequestError as error:
            return self._reject(error)
        self._finished = True
        return [codec.route_headers(codec.Route(worker.host_port, reach_headers(worker)))]

    def _list_models(self, model_id: str) -> list[pb.ProcessingResponse]:
        try:
            body = model_object(self._picker.workers(), model_id)
        except RequestError as error:
            return self._reject(error)
        self._finished = True
        return [codec.immediate_json(body)]

    def _reject(self, error: RequestError) -> list[pb.ProcessingResponse]:
        self._finished = True
        self._picker.reject(error)
        if self._access is not None:
            self._log(Outcome.REJECTED, error.status, None)
        api = api_of((self._headers or {}).get(":path", ""))
        return [codec.immediate_error(error, api is not None and api.anthropic)]

    def _log(self, outcome: Outcome, status: int | None, lease: Lease | None) -> None:
        assert self._access is not None
        headers = self._headers or {}
        choice = None if lease is None else lease.choice
        self._access.record(AccessEntry(
            request_id=headers.get("x-request-id", ""), model=self._model,
            policy=choice.policy if choice is not None
            else headers.get(control_headers.STRATEGY) or self._picker.default_policy,
            worker=None if lease is None else lease.worker.id,
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

    def _on_response_headers(self, message: pb.ProcessingRequest) -> list[pb.ProcessingResponse]:
        headers = codec.headers_to_dict(message.response_headers.headers)
        status = headers.get(":status", "")
        self._upstream_status = int(status) if status.isdigit() else 0
        served = codec.metadata_string(message, codec.LB_METADATA_NAMESPACE, codec.SERVED_KEY)
        lease = self._lease
        if served and lease is not None and served != lease.worker.host_port:
            worker = self._picker.worker_at(served)
            if worker is not None:
                lease.move_to(worker)
        if self._grpc is not None and lease is not None:
            return self._grpc_headers(lease, headers, message.response_headers.end_of_stream)
        mutation: dict[str, str] = {}
        explanation = self._explanation()
        if explanation is not None:  # an upstream's own copy is overwritten, never trusted
            mutation[EXPLAIN_HEADER] = explanation
        if self._conformance:
            mutation[CONFORMANCE_SERVED_HEADER] = served or "fail: missing destination endpoint " \
                                                            "served metadata"
        if self._sees_body and lease is not None:
            streamed = headers.get("content-type", "").startswith("text/event-stream")
            length = headers.get("content-length", "")
            self._observer = ResponseObserver(lease.started, streamed,
                                              int(length) if length.isdigit() else None)
        if message.response_headers.end_of_stream:
            self._response_over()
        return [codec.continue_response_headers(mutation)]

    def _explanation(self) -> str | None:
        """The explain header's line, when allowed and asked for (picker.observe.decisions)."""
        if self._lease is None or self._headers is None:
            return None
        return self._picker.explanation(self._headers, self._lease)

    def _grpc_headers(self, lease: Lease, headers: dict[str, str],
                      end_of_stream: bool) -> list[pb.ProcessingResponse]:
        """A gRPC worker's response headers (extproc.grpc_answer); the explain and conformance
        headers are not added to transcoded answers yet."""
        assert self._grpc is not None
        self._observer = ResponseObserver(
            lease.started, self._grpc.content_type == "text/event-stream")
        out = self._grpc.headers(headers, end_of_stream)
        if end_of_stream or any(r.HasField("immediate_response") for r in out):
            self._upstream_status = self._grpc.status
            self._response_over()
        return out

    def _on_grpc_response(self, chunk: bytes, responses: list[pb.ProcessingResponse],
                          over: bool) -> list[pb.ProcessingResponse]:
        """What the client gets of a gRPC worker's answer, seen as an HTTP answer's would be."""
        assert self._grpc is not None
        self._observe(chunk)
        if self._grpc.cut_short and self._abort is not None:
            lease = self._lease
            assert lease is not None and lease.transcoder is not None
            self._abort(lease.worker.host_port, lease.transcoder.abort("stop string"))
            self._abort = None  # once
        if over:
            self._upstream_status = self._grpc.status or self._upstream_status
            self._response_over()
        return responses

    def _observe(self, chunk: bytes) -> None:
        if chunk and not self._prefilled and self._lease is not None:
            self._prefilled = True
            self._lease.first_token()
        if self._observer is not None:
            self._observer.chunk(chunk, time.monotonic())

    def _on_response_body(self, body: pb.HttpBody) -> list[pb.ProcessingResponse]:
        if self._grpc is not None:
            out, responses = self._grpc.body(body.body, body.end_of_stream)
            return self._on_grpc_response(out, responses, body.end_of_stream)
        chunk = body.body
        self._observe(chunk)
        if body.end_of_stream:
            self._response_over()
        if self._echo:
            return codec.echo_response_body(chunk, body.end_of_stream)
        return [codec.continue_response_body()]

    def _response_over(self) -> None:
        """The response's last byte passed (last chunk, trailers or a bodiless response)."""
        if self._lease is not None:
            self._release(Outcome.UPSTREAM_ERROR if self._upstream_status >= 500
                          else Outcome.COMPLETED)
