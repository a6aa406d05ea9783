"""The bare router `bench overhead --peers bare` measures the picker against: it must answer
every BUFFERED message Envoy sends as a router would (continue, then the destination, then
continue), or the yardstick would be cheaper than any router can be."""

from __future__ import annotations

import grpc

from extproc._pb import ext_proc_pb2 as pb
from extproc.server import SERVICE_NAME
from picker.routing.control_headers import DESTINATION
from picker_bench.bare_router import bare_server


def _headers(pairs: dict[str, str]) -> pb.HeaderMap:
    return pb.HeaderMap(headers=[pb.HeaderValue(key=k, raw_value=v.encode())
                                 for k, v in pairs.items()])


async def test_the_bare_router_answers_a_buffered_request_with_its_one_destination() -> None:
    server, port = bare_server("127.0.0.1:9")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.stream_stream(
                f"/{SERVICE_NAME}/Process",
                request_serializer=pb.ProcessingRequest.SerializeToString,
                response_deserializer=pb.ProcessingResponse.FromString)()
            await call.write(pb.ProcessingRequest(request_headers=pb.HttpHeaders(
                headers=_headers({":method": "POST", ":path": "/v1/chat/completions"}))))
            assert (await call.read()).HasField("request_headers")
            await call.write(pb.ProcessingRequest(request_body=pb.HttpBody(
                body=b'{"model": "m", "messages": []}', end_of_stream=True)))
            routed = await call.read()
            mutation = routed.request_body.response.header_mutation
            assert [(h.header.key, h.header.raw_value) for h in mutation.set_headers] == [
                (DESTINATION, b"127.0.0.1:9")]
            await call.write(pb.ProcessingRequest(response_headers=pb.HttpHeaders(
                headers=_headers({":status": "200"}))))
            assert (await call.read()).HasField("response_headers")
            await call.done_writing()
            assert await call.code() == grpc.StatusCode.OK
    finally:
        await server.stop(None)
