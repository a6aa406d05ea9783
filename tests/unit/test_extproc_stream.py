"""The ext_proc state machine, driven message by message without gRPC."""

from __future__ import annotations

import asyncio
import json

import pytest

from extproc import codec
from extproc._pb import ext_proc_pb2 as pb
from extproc.stream import RequestStream
from picker.config import PickerConfig
from picker.fleet.worker_spec import WorkerSpec
from picker.routing import control_headers, hops
from picker.runtime import PickerRuntime

BODY = json.dumps(
    {"model": "m", "messages": [{"role": "user", "content": "hello"}], "stream": False}
).encode()


def make_router(*urls: str, models: list[str] | None = None) -> PickerRuntime:
    return runtime_of(*(WorkerSpec(url=u, models=models or ["m"]) for u in urls))


def runtime_of(*specs: WorkerSpec, **settings: object) -> PickerRuntime:
    """A runtime, not started: the stream needs none of its background services."""
    return PickerRuntime(PickerConfig.model_validate({"workers": list(specs), **settings}))


def headers_msg(
    path: str = "/v1/chat/completions",
    duplex: bool = True,
    end_of_stream: bool = False,
    extra: dict[str, str] | None = None,
) -> pb.ProcessingRequest:
    msg = pb.ProcessingRequest()
    if duplex:
        msg.protocol_config.request_body_mode = pb.FULL_DUPLEX_STREAMED
    else:
        msg.protocol_config.request_body_mode = pb.BUFFERED
    fields = {":path": path, ":method": "POST", "content-type": "application/json", **(extra or {})}
    for key, value in fields.items():
        header = msg.request_headers.headers.headers.add()
        header.key = key
        header.raw_value = value.encode()
    msg.request_headers.end_of_stream = end_of_stream
    return msg


def body_msg(chunk: bytes, end_of_stream: bool) -> pb.ProcessingRequest:
    msg = pb.ProcessingRequest()
    msg.request_body.body = chunk
    msg.request_body.end_of_stream = end_of_stream
    return msg


def set_headers(mutation: pb.HeaderMutation) -> dict[str, str]:
    return {o.header.key: o.header.raw_value.decode() for o in mutation.set_headers}


def test_duplex_routes_once_body_is_complete_and_returns_body_unchanged() -> None:
    router = make_router("127.0.0.1:8001")
    stream = RequestStream(router.routing, 1 << 20)
    assert stream.handle(headers_msg()) == []
    assert stream.handle(body_msg(BODY[:10], False)) == []
    headers, body = stream.handle(body_msg(BODY[10:], True))
    common = headers.request_headers.response
    assert set_headers(common.header_mutation) == {
        codec.DESTINATION_HEADER: "127.0.0.1:8001",
        "content-length": str(len(BODY)),
        control_headers.HOP: hops.TOKEN,
    }
    assert common.clear_route_cache
    lb = headers.dynamic_metadata.fields[codec.LB_METADATA_NAMESPACE].struct_value
    assert lb.fields[codec.DESTINATION_HEADER].string_value == "127.0.0.1:8001"
    streamed = body.request_body.response.body_mutation.streamed_response
    assert streamed.body == BODY and streamed.end_of_stream
    assert router.registry.workers()[0].in_flight == 1
    stream.close(cancelled=False)
    assert router.registry.workers()[0].in_flight == 0


@pytest.mark.parametrize("split", [1, 7, len(BODY) - 1])
def test_duplex_body_split_anywhere_routes_the_same(split: int) -> None:
    router = make_router("127.0.0.1:8001")
    stream = RequestStream(router.routing, 1 << 20)
    stream.handle(headers_msg())
    stream.handle(body_msg(BODY[:split], False))
    responses = stream.handle(body_msg(BODY[split:], True))
    assert responses[1].request_body.response.body_mutation.streamed_response.body == BODY


def test_buffered_answers_headers_at_once_and_routes_on_body() -> None:
    router = make_router("127.0.0.1:8001")
    stream = RequestStream(router.routing, 1 << 20)
    (first,) = stream.handle(headers_msg(duplex=False))
    removed = first.request_headers.response.header_mutation.remove_headers
    assert list(removed) == list(control_headers.STRIPPED)
    (routed,) = stream.handle(body_msg(BODY, True))
    common = routed.request_body.response
    assert set_headers(common.header_mutation) == {codec.DESTINATION_HEADER: "127.0.0.1:8001",
                                                   control_headers.HOP: hops.TOKEN}
    # Every other control header is removed again by the answer Envoy applies with the route.
    assert list(common.header_mutation.remove_headers) == [
        name for name in control_headers.STRIPPED if name != codec.DESTINATION_HEADER]
    assert not common.HasField("body_mutation")


def test_client_destination_header_is_overwritten_not_honoured() -> None:
    router = make_router("127.0.0.1:8001")
    stream = RequestStream(router.routing, 1 << 20)
    stream.handle(headers_msg(extra={codec.DESTINATION_HEADER: "10.9.9.9:22"}))
    headers, _ = stream.handle(body_msg(BODY, True))
    mutation = headers.request_headers.response.header_mutation
    assert set_headers(mutation)[codec.DESTINATION_HEADER] == "127.0.0.1:8001"
    option = mutation.set_headers[0]
    assert option.append_action == pb.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD


@pytest.mark.parametrize(
    ("path", "body", "status", "code"),
    [
        ("/v1/chat/completions", b"{not json", 400, "invalid_request"),
        ("/v1/chat/completions", b'{"messages": []}', 400, "invalid_request"),
        ("/v1/chat/completions", b'{"model": "other", "messages": []}', 404, "model_not_found"),
        ("/v1/unknown", BODY, 404, "unsupported_path"),
    ],
)
def test_bad_requests_become_immediate_json_errors(
    path: str, body: bytes, status: int, code: str
) -> None:
    router = make_router("127.0.0.1:8001")
    stream = RequestStream(router.routing, 1 << 20)
    stream.handle(headers_msg(path=path))
    (response,) = stream.handle(body_msg(body, True))
    immediate = response.immediate_response
    assert immediate.status.code == status
    assert json.loads(immediate.body)["error"]["code"] == code
    assert set_headers(immediate.headers)["content-type"] == "application/json"
    assert stream.lease is None
    stream.close(cancelled=False)
    assert router.registry.stats()["total_load"] == 0


def test_no_healthy_worker_is_503() -> None:
    router = make_router("127.0.0.1:8001")
    router.registry.set_healthy(router.registry.workers()[0], False)
    stream = RequestStream(router.routing, 1 << 20)
    stream.handle(headers_msg())
    (response,) = stream.handle(body_msg(BODY, True))
    assert response.immediate_response.status.code == 503


def test_body_over_limit_is_413_before_buffering_more() -> None:
    router = make_router("127.0.0.1:8001")
    stream = RequestStream(router.routing, 100)
    stream.handle(headers_msg())
    assert stream.handle(body_msg(b"x" * 60, False)) == []
    (response,) = stream.handle(body_msg(b"x" * 60, False))
    assert response.immediate_response.status.code == 413
    assert stream.handle(body_msg(b"x", True)) == []


def test_headers_without_body_is_a_clear_400() -> None:
    stream = RequestStream(make_router("127.0.0.1:8001").routing, 1 << 20)
    (response,) = stream.handle(headers_msg(end_of_stream=True))
    assert response.immediate_response.status.code == 400


@pytest.mark.parametrize("cancelled", [False, True])
def test_close_releases_the_slot_exactly_once(cancelled: bool) -> None:
    router = make_router("127.0.0.1:8001")
    stream = RequestStream(router.routing, 1 << 20)
    stream.handle(headers_msg())
    stream.handle(body_msg(BODY, True))
    stream.close(cancelled)
    stream.close(cancelled)
    assert router.registry.workers()[0].in_flight == 0
    text = router.metrics.render().decode()
    outcome = "cancelled" if cancelled else "completed"
    assert f'llm_picker_requests_total{{outcome="{outcome}"}} 1.0' in text


def test_upstream_5xx_seen_in_response_headers_is_the_outcome() -> None:
    router = make_router("127.0.0.1:8001")
    stream = RequestStream(router.routing, 1 << 20)
    stream.handle(headers_msg())
    stream.handle(body_msg(BODY, True))
    msg = pb.ProcessingRequest()
    status = msg.response_headers.headers.headers.add()
    status.key, status.raw_value = ":status", b"503"
    (response,) = stream.handle(msg)
    assert response.WhichOneof("response") == "response_headers"
    stream.close(cancelled=False)
    assert 'outcome="upstream_error"' in router.metrics.render().decode()


def test_trailers_after_duplex_body_route_and_are_acknowledged() -> None:
    router = make_router("127.0.0.1:8001")
    stream = RequestStream(router.routing, 1 << 20)
    stream.handle(headers_msg())
    assert stream.handle(body_msg(BODY, False)) == []
    trailers = pb.ProcessingRequest()
    trailers.request_trailers.SetInParent()
    headers, body, ack = stream.handle(trailers)
    assert headers.WhichOneof("response") == "request_headers"
    assert not body.request_body.response.body_mutation.streamed_response.end_of_stream
    assert ack.WhichOneof("response") == "request_trailers"


@pytest.mark.parametrize(
    "first",
    [body_msg(BODY, True), pb.ProcessingRequest(request_trailers=pb.HttpTrailers())],
)
def test_messages_out_of_order_get_a_local_reply_not_a_crash(first: pb.ProcessingRequest) -> None:
    router = make_router("127.0.0.1:8001")
    stream = RequestStream(router.routing, 1 << 20)
    (response,) = stream.handle(first)
    assert response.immediate_response.status.code == 400
    stream.close(cancelled=False)
    assert router.registry.stats()["total_load"] == 0


def test_streamed_body_mode_is_refused_with_a_clear_500() -> None:
    """STREAMED answers headers before the body exists, so a body-based pick cannot route."""
    msg = headers_msg()
    msg.protocol_config.request_body_mode = pb.STREAMED
    (response,) = RequestStream(make_router("127.0.0.1:8001").routing, 1 << 20).handle(msg)
    assert response.immediate_response.status.code == 500
    assert b"request_body_mode" in response.immediate_response.body


@pytest.mark.parametrize("duplex", [True, False])
def test_dp_rank_header_set_for_rank_workers_and_client_copy_removed(duplex: bool) -> None:
    router = runtime_of(WorkerSpec(url="http://127.0.0.1:8001@3", dp_size=4, models=["m"]))
    stream = RequestStream(router.routing, 1 << 20)
    first = stream.handle(headers_msg(duplex=duplex, extra={control_headers.DP_RANK: "0"}))
    responses = stream.handle(body_msg(BODY, True))
    routed = responses[0]
    common = routed.request_headers.response if duplex else routed.request_body.response
    assert set_headers(common.header_mutation)[control_headers.DP_RANK] == "3"
    assert set_headers(common.header_mutation)[codec.DESTINATION_HEADER] == "127.0.0.1:8001"
    if not duplex:
        removed = first[0].request_headers.response.header_mutation.remove_headers
        assert control_headers.DP_RANK in removed


def test_non_rank_worker_strips_a_client_rank_header() -> None:
    stream = RequestStream(make_router("127.0.0.1:8001").routing, 1 << 20)
    stream.handle(headers_msg(extra={control_headers.DP_RANK: "1"}))
    headers, _ = stream.handle(body_msg(BODY, True))
    mutation = headers.request_headers.response.header_mutation
    assert control_headers.DP_RANK not in set_headers(mutation)
    assert control_headers.DP_RANK in mutation.remove_headers


def test_worker_api_key_is_set_on_the_routed_request() -> None:
    router = runtime_of(WorkerSpec(url="127.0.0.1:8001", models=["m"], api_key="sk-w"))
    stream = RequestStream(router.routing, 1 << 20)
    stream.handle(headers_msg(duplex=False, extra={"authorization": "Bearer client-key"}))
    (routed,) = stream.handle(body_msg(BODY, True))
    assert set_headers(routed.request_body.response.header_mutation)["authorization"] == \
        "Bearer sk-w"


async def test_a_pick_not_learned_yet_still_steers_the_next_request_by_prefix() -> None:
    """Picks are learned after the answer, on the loop's next turn; two streams deciding in
    the same turn (back-to-back requests with one long prompt) must still meet on one
    worker under prefix_cache, not be spread by load."""
    router = runtime_of(WorkerSpec(url="127.0.0.1:8001", models=["m"]),
                        WorkerSpec(url="127.0.0.1:8002", models=["m"]),
                        policy="prefix_cache", prefix={"enabled": True})
    body = json.dumps({"model": "m", "prompt": "a shared document " * 2000}).encode()
    served = []
    for _ in range(2):
        stream = RequestStream(router.routing, 1 << 20)
        stream.handle(headers_msg(path="/v1/completions", duplex=False))
        (routed,) = stream.handle(body_msg(body, True))
        served.append(set_headers(routed.request_body.response.header_mutation)[
            codec.DESTINATION_HEADER])
    assert served[0] == served[1]


async def test_remote_tokenizer_makes_routing_an_awaited_step() -> None:
    from tests.sim_thread import running_sim

    with running_sim(model="m") as url:
        router = runtime_of(
            WorkerSpec(url="127.0.0.1:8001", models=["m"]), policy="prefix_cache",
            prefix={"enabled": True, "block_size": 2,
                    "tokenizer": {"kind": "remote", "endpoint": url}})
        stream = RequestStream(router.routing, 1 << 20)
        stream.handle(headers_msg(duplex=False))
        assert stream.handle(body_msg(BODY, True)) == [] and stream.pending
        (routed,) = await stream.finish()
        assert not stream.pending
        headers = set_headers(routed.request_body.response.header_mutation)
        assert headers[codec.DESTINATION_HEADER] == "127.0.0.1:8001"
        index = router.prefix_index()
        worker_id = router.registry.workers()[0].id
        # The pick is learned after the answer, once the loop turns.
        assert index is not None and index.blocks_of(worker_id) == 0
        await asyncio.sleep(0)
        assert index.blocks_of(worker_id) == 1


def _streamed(responses: list[pb.ProcessingResponse], request: bool) -> list[tuple[int, bool]]:
    out = []
    for response in responses:
        common = response.request_body.response if request else response.response_body.response
        streamed = common.body_mutation.streamed_response
        out.append((len(streamed.body), streamed.end_of_stream))
    return out


@pytest.mark.parametrize(("size", "chunks"), [
    (0, [(0, True)]), (62_000, [(62_000, True)]), (62_001, [(62_000, False), (1, True)]),
    (150_000, [(62_000, False), (62_000, False), (26_000, True)]),
])
def test_duplex_echoes_a_large_body_in_chunks_of_at_most_62000_bytes(
        size: int, chunks: list[tuple[int, bool]]) -> None:
    """llm-d-router pkg/common/envoy/chunking.go:26: Envoy builds with a 64 KiB cap on a
    streamed mutation; the end of stream only on the last chunk, the bytes unchanged."""
    body = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    route = codec.Route("127.0.0.1:8001")
    headers, *rest = codec.route_streamed(route, body, end_of_stream=True)
    assert headers.HasField("request_headers")
    assert _streamed(rest, request=True) == chunks
    assert b"".join(r.request_body.response.body_mutation.streamed_response.body
                    for r in rest) == body
    assert _streamed(codec.echo_response_body(body, True), request=False) == chunks


def test_duplex_stream_answers_a_megabyte_body_in_chunks() -> None:
    big = json.dumps({"model": "m", "messages": [{"role": "user",
                                                    "content": "x" * 1_200_000}]}).encode()
    stream = RequestStream(make_router("127.0.0.1:8001").routing, 1 << 22)
    stream.handle(headers_msg())
    responses = stream.handle(body_msg(big, True))
    bodies = _streamed(responses[1:], request=True)
    assert len(bodies) == -(-len(big) // codec.BODY_CHUNK_BYTES)
    assert all(size <= 62_000 for size, _ in bodies)
    assert [eos for _, eos in bodies] == [False] * (len(bodies) - 1) + [True]


def _probe_msg(method: str = "GET", path: str = "/health") -> pb.ProcessingRequest:
    return headers_msg(path, end_of_stream=True, extra={":method": method})


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_a_health_probe_goes_to_a_routable_worker_without_a_lease(method: str) -> None:
    """Issue 31 item 11 (picker.routing.gateway_probes): the reference picker routes bodiless
    requests to a random endpoint; the picker does for health probes, to a routable one."""
    runtime = make_router("127.0.0.1:8001", "127.0.0.1:8002")
    runtime.registry.set_healthy(runtime.registry.workers()[0], False)
    stream = RequestStream(runtime.routing, 1 << 20)
    (routed,) = stream.handle(_probe_msg(method))
    mutation = routed.request_headers.response.header_mutation
    assert set_headers(mutation) == {codec.DESTINATION_HEADER: "127.0.0.1:8002"}
    assert stream.lease is None


def test_a_health_probe_with_no_routable_worker_is_503() -> None:
    runtime = make_router("127.0.0.1:8001")
    runtime.registry.set_healthy(runtime.registry.workers()[0], False)
    (reply,) = RequestStream(runtime.routing, 1 << 20).handle(_probe_msg())
    assert reply.immediate_response.status.code == 503


def test_other_bodiless_requests_keep_their_clear_errors() -> None:
    runtime = make_router("127.0.0.1:8001")
    (post,) = RequestStream(runtime.routing, 1 << 20).handle(_probe_msg("POST", "/health"))
    (metrics,) = RequestStream(runtime.routing, 1 << 20).handle(_probe_msg("GET", "/metrics"))
    assert post.immediate_response.status.code == 404
    assert metrics.immediate_response.status.code == 404
