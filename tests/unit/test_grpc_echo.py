"""The grpc.aio floor's driver: `bench overhead` divides the echo server's CPU by what it
reports, so a miscount would make the floor (and every ratio against it) wrong."""

from __future__ import annotations

from picker_bench.grpc_echo import drive_streams, echo_server


async def test_drive_streams_completes_each_stream_with_its_messages() -> None:
    server, port = echo_server()
    await server.start()
    try:
        assert await drive_streams(port, concurrency=3, streams=7, messages_per_stream=4,
                                   size=16) == 7
    finally:
        await server.stop(None)
