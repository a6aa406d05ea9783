"""The gRPC face of the picker: Envoy's ExternalProcessor/Process on grpc.aio."""

from __future__ import annotations

import grpc

from extproc._pb import ext_proc_pb2 as pb
from extproc.stream import RequestStream
from picker.router import Router

__all__ = ["SERVICE_NAME", "create_server"]

SERVICE_NAME = "envoy.service.ext_proc.v3.ExternalProcessor"


class _Processor:
    def __init__(self, router: Router, max_body_bytes: int) -> None:
        self._router = router
        self._max_body = max_body_bytes

    async def process(self, _requests: object, context: grpc.aio.ServicerContext) -> None:
        """One HTTP request's stream; read/write calls avoid async-generator overhead."""
        stream = RequestStream(self._router, self._max_body)
        # The RPC's own end, not the handler's, says whether Envoy half-closed the stream or
        # reset it: a reset can surface in the handler as a plain EOF.
        context.add_done_callback(lambda done: stream.close(done.cancelled()))
        while True:
            message = await context.read()
            if message is grpc.aio.EOF:
                return
            for response in stream.handle(message):
                await context.write(response)
            if stream.pending:
                for response in await stream.finish():
                    await context.write(response)


def create_server(
    router: Router, host: str, port: int, max_body_bytes: int
) -> tuple[grpc.aio.Server, int]:
    """A server bound to host:port (0 picks a free port), not yet started; returns the port."""
    processor = _Processor(router, max_body_bytes)
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
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
        ]
    )
    server.add_generic_rpc_handlers((handler,))
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot listen for ext_proc on {host}:{port}")
    return server, bound
