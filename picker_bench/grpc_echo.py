"""The floor of grpc.aio itself: a bidirectional stream server that echoes each message and does
nothing else (bytes in, the same bytes out, no protobuf decoding), and a client driving it.

`llm-picker bench overhead` runs the server as its own process and divides its CPU time by the
messages echoed: what any Python ext_proc server pays per message before doing any work, the
yardstick for the picker's cost per echoed response chunk.

    python -m picker_bench.grpc_echo PORT      # serve until terminated
"""

from __future__ import annotations

import asyncio
import sys

import grpc

__all__ = ["drive", "drive_streams", "echo_server", "serve"]

_METHOD = "/bench.Echo/Echo"


def _identity(data: bytes) -> bytes:
    return data


async def _echo(_requests: object, context: grpc.aio.ServicerContext) -> None:
    while True:
        message = await context.read()
        if message is grpc.aio.EOF:
            return
        await context.write(message)


def echo_server(port: int = 0) -> tuple[grpc.aio.Server, int]:
    """The echo server bound to 127.0.0.1:`port` (0: a free one), not yet started."""
    server = grpc.aio.server()
    handler = grpc.method_handlers_generic_handler("bench.Echo", {
        "Echo": grpc.stream_stream_rpc_method_handler(
            _echo, request_deserializer=_identity, response_serializer=_identity)})
    server.add_generic_rpc_handlers((handler,))
    return server, server.add_insecure_port(f"127.0.0.1:{port}")


async def serve(port: int) -> None:
    server, port = echo_server(port)
    await server.start()
    print(f"grpc echo serving on 127.0.0.1:{port}", flush=True)
    await server.wait_for_termination()


async def drive(port: int, streams: int, messages_per_stream: int, size: int) -> int:
    """`streams` concurrent streams, each sending one message at a time and awaiting its echo
    (as Envoy's ext_proc waits per chunk); returns the messages echoed."""
    payload = b"x" * size
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call_of = channel.stream_stream(_METHOD, request_serializer=_identity,
                                        response_deserializer=_identity)

        async def one() -> int:
            call = call_of()
            for _ in range(messages_per_stream):
                await call.write(payload)
                await call.read()
            await call.done_writing()
            return messages_per_stream

        counts = await asyncio.wait_for(
            asyncio.gather(*(one() for _ in range(streams))), timeout=300)
    return sum(counts)


async def drive_streams(port: int, concurrency: int, streams: int, messages_per_stream: int,
                        size: int) -> int:
    """`streams` streams of `messages_per_stream` echoed messages each, `concurrency` at a
    time (one new stream per HTTP request, as Envoy opens one ext_proc stream per request);
    returns the streams completed."""
    payload = b"x" * size
    left = streams
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call_of = channel.stream_stream(_METHOD, request_serializer=_identity,
                                        response_deserializer=_identity)

        async def client() -> int:
            nonlocal left
            done = 0
            while left > 0:
                left -= 1
                call = call_of()
                for _ in range(messages_per_stream):
                    await call.write(payload)
                    await call.read()
                await call.done_writing()
                await call.code()  # the stream's end, as Envoy waits for it
                done += 1
            return done

        counts = await asyncio.wait_for(
            asyncio.gather(*(client() for _ in range(concurrency))), timeout=300)
    return sum(counts)


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1])))
