"""Property-based: any sequence of ext_proc messages gets answers or a clean end, never an
exception, and the load counters stay consistent whatever happened."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from extproc._pb import ext_proc_pb2 as pb
from extproc.stream import RequestStream
from tests.unit.test_extproc_stream import body_msg, headers_msg, make_router

GOOD = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()


def trailers() -> pb.ProcessingRequest:
    msg = pb.ProcessingRequest()
    msg.request_trailers.SetInParent()
    return msg


def response_headers(status: str) -> pb.ProcessingRequest:
    msg = pb.ProcessingRequest()
    header = msg.response_headers.headers.headers.add()
    header.key, header.raw_value = ":status", status.encode()
    return msg


messages = st.one_of(
    st.builds(headers_msg, path=st.sampled_from(["/v1/chat/completions", "/v1/x", ""]),
              duplex=st.booleans(), end_of_stream=st.booleans()),
    st.builds(body_msg, st.one_of(st.just(GOOD), st.binary(max_size=64)), st.booleans()),
    st.just(trailers()),
    st.builds(response_headers, st.sampled_from(["200", "503", "", "abc"])),
    st.just(pb.ProcessingRequest()),  # an empty oneof
    st.binary(max_size=40).map(lambda raw: _parse_or_empty(raw)),
)


def _parse_or_empty(raw: bytes) -> pb.ProcessingRequest:
    try:
        return pb.ProcessingRequest.FromString(raw)
    except Exception:  # noqa: BLE001 - undecodable bytes never reach the handler
        return pb.ProcessingRequest()


@settings(max_examples=400, deadline=None)
@given(st.lists(messages, max_size=8), st.booleans())
def test_random_message_sequences(sequence: list[pb.ProcessingRequest], cancelled: bool) -> None:
    router = make_router("127.0.0.1:8001")
    stream = RequestStream(router.routing, max_body_bytes=256)
    for message in sequence:
        for response in stream.handle(message):
            assert response.WhichOneof("response") is not None
            response.SerializeToString()
    stream.close(cancelled)
    stream.close(not cancelled)  # a second end must change nothing
    assert router.registry.stats()["total_load"] == 0
    assert router.leases.active == 0


@settings(max_examples=300, deadline=None)
@given(st.booleans(), st.lists(messages, max_size=6), st.booleans())
def test_after_a_real_pick_any_noise_still_releases_once(
        duplex: bool, noise: list[pb.ProcessingRequest], cancelled: bool) -> None:
    router = make_router("127.0.0.1:8001")
    stream = RequestStream(router.routing, max_body_bytes=1 << 16)
    stream.handle(headers_msg(duplex=duplex))
    stream.handle(body_msg(GOOD, True))
    assert stream.lease is not None and router.leases.active == 1
    for message in noise:
        stream.handle(message)
    stream.close(cancelled)
    assert router.registry.stats()["total_load"] == 0 and router.leases.active == 0
    ended = [line for line in router.metrics.render().decode().splitlines()
             if line.startswith("llm_picker_requests_total{") and 'rejected' not in line]
    assert sum(float(line.rsplit(" ", 1)[1]) for line in ended) == 1.0
