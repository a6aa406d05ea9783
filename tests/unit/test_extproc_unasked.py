"""A message the picker sends Envoy unasked (flow control ending a request) on a real grpc.aio
call, while the handler writes its own answer: grpc.aio takes one write at a time, and the
unasked one must still arrive."""

from __future__ import annotations

import asyncio

import grpc

from extproc import server
from extproc._pb import ext_proc_pb2 as pb

_METHOD = "/test.Unasked/Process"


def test_an_unasked_message_meeting_the_handlers_write_is_sent_after_it() -> None:
    written: list[bool] = []

    async def handler(_: object, context: grpc.aio.ServicerContext) -> None:
        await context.read()
        answer = pb.ProcessingResponse()
        answer.immediate_response.body = b"x" * 2_000_000  # a write that takes a while
        unasked = pb.ProcessingResponse()
        unasked.immediate_response.details = "unasked"
        writing = asyncio.ensure_future(context.write(answer))
        await asyncio.sleep(0)
        server._write_unasked(asyncio.get_running_loop(), context, unasked,
                              lambda: written.append(True))  # meets the write in progress
        await writing
        await context.read()  # until the client is done

    async def run() -> list[str]:
        grpc_server = grpc.aio.server(options=[("grpc.max_send_message_length", 4_000_000)])
        grpc_server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
            "test.Unasked", {"Process": grpc.stream_stream_rpc_method_handler(
                handler, request_deserializer=pb.ProcessingRequest.FromString,
                response_serializer=pb.ProcessingResponse.SerializeToString)})])
        port = grpc_server.add_insecure_port("127.0.0.1:0")
        await grpc_server.start()
        try:
            async with grpc.aio.insecure_channel(
                    f"127.0.0.1:{port}",
                    options=[("grpc.max_receive_message_length", 4_000_000)]) as channel:
                call = channel.stream_stream(
                    _METHOD, request_serializer=pb.ProcessingRequest.SerializeToString,
                    response_deserializer=pb.ProcessingResponse.FromString)()
                await call.write(pb.ProcessingRequest())
                got = [await asyncio.wait_for(call.read(), 10) for _ in range(2)]
                await call.done_writing()
                return ["answer" if m.immediate_response.body else m.immediate_response.details
                        for m in got]
        finally:
            await grpc_server.stop(0)

    assert sorted(asyncio.run(run())) == ["answer", "unasked"]
    assert written == [True]  # told once it was out, not before
