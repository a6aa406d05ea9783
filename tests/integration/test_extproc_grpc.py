"""The ext_proc server over real gRPC on loopback: stream end and reset release the slot."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import grpc
import pytest

from extproc._pb import PROCESS_METHOD
from extproc._pb import ext_proc_pb2 as pb
from extproc.server import create_server
from picker.config import PickerConfig
from picker.fleet.worker_spec import WorkerSpec
from picker.runtime import PickerRuntime
from tests.unit.test_extproc_stream import body_msg, headers_msg

BODY = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()


@pytest.fixture
async def served() -> AsyncIterator[tuple[PickerRuntime, grpc.aio.Channel]]:
    router = PickerRuntime(PickerConfig(workers=[WorkerSpec(url="127.0.0.1:8001", models=["m"])]))
    server, port = create_server(router.routing, "127.0.0.1", 0, 1 << 20)
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    yield router, channel
    await channel.close()
    await server.stop(None)


def process_call(channel: grpc.aio.Channel) -> grpc.aio.StreamStreamCall:
    method = channel.stream_stream(
        PROCESS_METHOD,
        request_serializer=pb.ProcessingRequest.SerializeToString,
        response_deserializer=pb.ProcessingResponse.FromString,
    )
    return method()


async def wait_for_load(router: PickerRuntime, expected: int) -> None:
    for _ in range(100):
        if router.registry.stats()["total_load"] == expected:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"load stayed at {router.registry.stats()['total_load']}")


async def route_one(call: grpc.aio.StreamStreamCall) -> pb.ProcessingResponse:
    await call.write(headers_msg())
    await call.write(body_msg(BODY, True))
    headers_response = await call.read()
    await call.read()  # the body handed back
    return headers_response


async def test_half_close_after_routing_releases_as_completed(
    served: tuple[PickerRuntime, grpc.aio.Channel],
) -> None:
    router, channel = served
    call = process_call(channel)
    routed = await route_one(call)
    assert routed.WhichOneof("response") == "request_headers"
    await wait_for_load(router, 1)
    await call.done_writing()
    assert await call.read() is grpc.aio.EOF
    await wait_for_load(router, 0)
    assert 'outcome="completed"} 1.0' in router.metrics.render().decode()


async def test_stream_reset_releases_the_slot_once(
    served: tuple[PickerRuntime, grpc.aio.Channel],
) -> None:
    """A reset may reach the handler as a cancellation or as a plain EOF, depending on timing
    inside gRPC; either way the slot is released, and counted once."""
    router, channel = served
    call = process_call(channel)
    await route_one(call)
    await wait_for_load(router, 1)
    call.cancel()
    await wait_for_load(router, 0)
    text = router.metrics.render().decode()
    ended = [line for line in text.splitlines() if line.startswith("llm_picker_requests_total")]
    assert len(ended) == 1 and ended[0].endswith(" 1.0"), ended


async def test_many_concurrent_streams_mixed_endings_leave_no_load(
    served: tuple[PickerRuntime, grpc.aio.Channel],
) -> None:
    router, channel = served

    async def one(i: int) -> None:
        call = process_call(channel)
        await route_one(call)
        if i % 2:
            call.cancel()
        else:
            await call.done_writing()
            await call.read()

    await asyncio.gather(*(one(i) for i in range(200)))
    await wait_for_load(router, 0)
