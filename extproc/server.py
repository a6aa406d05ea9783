"""The gRPC face of the picker: Envoy's ExternalProcessor/Process on grpc.aio (plus, when given,
the gRPC health services on the same port)."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from typing import Literal

import grpc

from extproc._pb import ext_proc_pb2 as pb
from extproc.health import HealthService
from extproc.stream import RequestStream
from extproc.subset import SubsetMatcher
from extproc.tls import grpc_credentials
from picker.grpc_route.abort import Aborts
from picker.listen import TlsConfig, check_free
from picker.observe.access_log import AccessLog
from picker.routing.contract import Picker

__all__ = ["SERVICE_NAME", "create_server"]

SERVICE_NAME = "envoy.service.ext_proc.v3.ExternalProcessor"

_log = logging.getLogger(__name__)


class _Processor:
    def __init__(self, picker: Picker, max_body_bytes: int, access: AccessLog | None,
                 fallbacks: int, conformance: bool) -> None:
        self._picker = picker
        self._max_body = max_body_bytes
        self._access = access
        self._fallbacks = fallbacks
        self._conformance = conformance
        self._subsets = SubsetMatcher()  # its hostname cache is shared by every stream
        self._aborts = Aborts()

    def _ended(self, stream: RequestStream, cancelled: bool) -> None:
        """The stream's end: its lease released, and a generation the client left aborted."""
        stream.close(cancelled)
        abandoned = stream.abandoned_generation
        if abandoned is not None:
            self._aborts.send(*abandoned)

    async def process(self, _requests: object, context: grpc.aio.ServicerContext) -> None:
        """One HTTP request's stream; read/write calls avoid async-generator overhead."""
        stream = RequestStream(self._picker, self._max_body, self._access, self._subsets,
                               self._fallbacks, self._conformance, self._aborts.send,
                               functools.partial(_write_unasked,
                                                 asyncio.get_running_loop(), context))
        # The RPC's own end, not the handler's, says whether Envoy half-closed the stream or
        # reset it: a reset can surface in the handler as a plain EOF.
        context.add_done_callback(lambda done: self._ended(stream, done.cancelled()))
        while True:
            message = await context.read()
            if message is grpc.aio.EOF:
                return
            for response in stream.handle(message):
                await context.write(response)
            if stream.pending:
                for response in await stream.finish():
                    await context.write(response)


# Unasked writes in progress: a task the loop does not hold is collected mid-write.
_UNASKED: set[asyncio.Task[None]] = set()
_UNASKED_TRIES = 5


def _write_unasked(loop: asyncio.AbstractEventLoop, context: grpc.aio.ServicerContext,
                   response: pb.ProcessingResponse, written: Callable[[], None]) -> None:
    """Have `response` written on the stream, from any thread: on the stream's `loop`, beside
    the handler's read of the next message (a stream with no message pending from Envoy has
    its handler waiting in `read`); `written` once it is."""
    loop.call_soon_threadsafe(_start_write, context, response, written)


def _start_write(context: grpc.aio.ServicerContext, response: pb.ProcessingResponse,
                 written: Callable[[], None]) -> None:
    task = asyncio.ensure_future(_write(context, response, written))
    _UNASKED.add(task)
    task.add_done_callback(_UNASKED.discard)


async def _write(context: grpc.aio.ServicerContext, response: pb.ProcessingResponse,
                 written: Callable[[], None]) -> None:
    """grpc.aio takes one write at a time per call: one that meets the handler's own (answering
    a message Envoy sent just then) fails with GRPC_CALL_ERROR_TOO_MANY_OPERATIONS, so it is
    tried again once that is out. A call already ended has nothing left to end."""
    for attempt in range(_UNASKED_TRIES):
        try:
            await context.write(response)
        except Exception as exc:
            if context.done():
                return
            _log.debug("unasked ext_proc message not written (try %d): %s", attempt + 1, exc)
            await asyncio.sleep(0.001 * (attempt + 1))
        else:
            written()
            return
    _log.warning("an ext_proc stream took no unasked message in %d tries: its request was "
                 "not ended", _UNASKED_TRIES)


def create_server(
    picker: Picker, host: str, port: int, max_body_bytes: int,
    tls: TlsConfig | Literal["self_signed"] | None = None, access: AccessLog | None = None,
    health: HealthService | None = None, fallbacks: int = 0, conformance: bool = False,
) -> tuple[grpc.aio.Server, int]:
    """A server bound to host:port (0 picks a free port), not yet started; returns the port.
    `fallbacks`, `conformance`: extproc.fallbacks and extproc.conformance."""
    processor = _Processor(picker, max_body_bytes, access, fallbacks, conformance)
    handler = grpc.method_handlers_generic_handler(
        SERVICE_NAME,
        {
            "Process": grpc.stream_stream_rpc_method_handler(
                processor.process,
                request_deserializer=pb.ProcessingRequest.FromString,
                response_serializer=pb.ProcessingResponse.SerializeToString,
            )
        },
    )
    # Bodies arrive inside gRPC messages: allow the configured body limit plus framing.
    limit = max_body_bytes + 64 * 1024
    # gRPC's default SO_REUSEPORT would let a second picker share the port and split Envoy's
    # streams between two processes with separate state; check first for a one-line error.
    check_free(host, port, "ext_proc")
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            ("grpc.so_reuseport", 0),
        ]
    )
    server.add_generic_rpc_handlers((handler,))
    if health is not None:
        health.add_to(server)
    try:
        if tls is None:
            bound = server.add_insecure_port(f"{host}:{port}")
        else:
            bound = server.add_secure_port(f"{host}:{port}", grpc_credentials(tls, host))
    except RuntimeError as exc:  # taken between the check and the bind
        raise OSError(f"ext_proc cannot listen on {host}:{port}") from exc
    return server, bound
