"""The least any Python ext_proc router does, on the picker's own gRPC setup: a yardstick
between grpc.aio's echo floor (picker_bench.grpc_echo: bytes through, nothing parsed) and the
picker.

Per BUFFERED request it reads the request headers into a dict and lets them through, decodes
the body's JSON and reads its model, answers with the one upstream as the destination (the
picker's own answer messages, extproc.codec), and reads the status from the response headers.
No registry, lease, policy, metrics or prefix index. `llm-picker bench overhead --peers bare`
runs it behind the same Envoy as `buffered`: the picker's CPU per request above it is what the
picker's features cost, and the bare router's own distance from the echo floor is what typed
ext_proc messages and a JSON body cost any router written in Python (issue 27).

    python -m picker_bench.bare_router PORT UPSTREAM_HOST:PORT   # serve until terminated
"""

from __future__ import annotations

import asyncio
import sys

import grpc
import msgspec

from extproc import codec
from extproc._pb import ext_proc_pb2 as pb
from extproc.server import SERVICE_NAME
from llm_picker.cli import event_loop_factory
from picker.routing.control_headers import DESTINATION

__all__ = ["bare_server"]


class _BodyModel(msgspec.Struct):
    model: str = ""


def bare_server(upstream: str, port: int = 0) -> tuple[grpc.aio.Server, int]:
    """The bare router bound to 127.0.0.1:`port` (0: a free one), sending every request to
    `upstream` (host:port); not yet started."""
    destination = ((DESTINATION, upstream),)
    body_model = msgspec.json.Decoder(_BodyModel)

    async def process(_requests: object, context: grpc.aio.ServicerContext) -> None:
        while True:
            message = await context.read()
            if message is grpc.aio.EOF:
                return
            kind = message.WhichOneof("request")
            if kind == "request_headers":
                codec.headers_to_dict(message.request_headers.headers)
                await context.write(codec.continue_headers())
            elif kind == "request_body":
                body_model.decode(message.request_body.body)
                await context.write(codec.route_buffered(codec.Route(upstream, destination)))
            elif kind == "response_headers":
                codec.headers_to_dict(message.response_headers.headers).get(":status")
                await context.write(codec.continue_response_headers())

    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, {
        "Process": grpc.stream_stream_rpc_method_handler(
            process, request_deserializer=pb.ProcessingRequest.FromString,
            response_serializer=pb.ProcessingResponse.SerializeToString)}),))
    return server, server.add_insecure_port(f"127.0.0.1:{port}")


async def _serve(port: int, upstream: str) -> None:
    server, port = bare_server(upstream, port)
    await server.start()
    print(f"bare ext_proc router serving on 127.0.0.1:{port}", flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    with asyncio.Runner(loop_factory=event_loop_factory("auto")) as runner:
        runner.run(_serve(int(sys.argv[1]), sys.argv[2]))
