"""The ext_proc stream's response side and the Endpoint Picker Protocol, driven without gRPC."""

from __future__ import annotations

import asyncio
import time

import pytest

from extproc import codec
from extproc._pb import ext_proc_pb2 as pb
from extproc.stream import CONFORMANCE_SELECTION_HEADER, CONFORMANCE_SERVED_HEADER, RequestStream
from extproc.subset import SubsetMatcher
from picker.fleet.speed import Observation
from picker.fleet.worker_spec import WorkerSpec
from picker.runtime import PickerRuntime
from tests.unit.test_extproc_stream import BODY, body_msg, headers_msg, make_router, runtime_of

A, B, C = "127.0.0.1:8001", "127.0.0.1:8002", "127.0.0.1:8003"
SSE = [b'data: {"choices":[{"delta":{"content":"hi"}}],"usage":null}\n\n',
       b'data: {"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":2,',
       b'"prompt_tokens_details":{"cached_tokens":4}}}\n\n', b"data: [DONE]\n\n"]


def duplex_both_ways(extra: dict[str, str] | None = None,
                     metadata: dict[str, dict[str, object]] | None = None) -> pb.ProcessingRequest:
    msg = headers_msg(extra=extra)
    msg.protocol_config.response_body_mode = pb.FULL_DUPLEX_STREAMED
    for namespace, fields in (metadata or {}).items():
        msg.metadata_context.filter_metadata[namespace].update(fields)
    return msg


def response_headers(status: str = "200", content_type: str = "text/event-stream",
                     served: str | None = None, end_of_stream: bool = False
                     ) -> pb.ProcessingRequest:
    msg = pb.ProcessingRequest()
    for key, value in ((":status", status), ("content-type", content_type)):
        header = msg.response_headers.headers.headers.add()
        header.key, header.raw_value = key, value.encode()
    msg.response_headers.end_of_stream = end_of_stream
    if served is not None:
        msg.metadata_context.filter_metadata[codec.LB_METADATA_NAMESPACE].update(
            {codec.SERVED_KEY: served})
    return msg


def response_body(chunk: bytes, end_of_stream: bool) -> pb.ProcessingRequest:
    msg = pb.ProcessingRequest()
    msg.response_body.body = chunk
    msg.response_body.end_of_stream = end_of_stream
    return msg


def routed(runtime: PickerRuntime, **kwargs: object) -> tuple[RequestStream, pb.ProcessingResponse]:
    extproc = runtime.config.extproc  # the settings `serve` hands its streams
    stream = RequestStream(runtime.routing, 1 << 20, fallbacks=extproc.fallbacks,
                           conformance=extproc.conformance)
    assert stream.handle(duplex_both_ways(**kwargs)) == []  # type: ignore[arg-type]
    responses = stream.handle(body_msg(BODY, True))
    return stream, responses[0]


def destination(response: pb.ProcessingResponse) -> tuple[str, str]:
    mutation = response.request_headers.response.header_mutation
    header = {o.header.key: o.header.raw_value.decode() for o in mutation.set_headers}
    lb = response.dynamic_metadata.fields[codec.LB_METADATA_NAMESPACE].struct_value
    return (header.get(codec.DESTINATION_HEADER, ""),
            lb.fields[codec.DESTINATION_HEADER].string_value)


def ident(runtime: PickerRuntime, host_port: str) -> str:
    return next(w.id for w in runtime.registry.workers() if w.host_port == host_port)


def in_flight(runtime: PickerRuntime) -> dict[str, int]:
    return {w.host_port: w.in_flight for w in runtime.registry.workers()}


def test_duplex_response_chunks_come_back_unchanged_and_the_last_releases_the_slot() -> None:
    runtime = make_router(A)
    stream, _ = routed(runtime)
    (headers,) = stream.handle(response_headers())
    assert headers.WhichOneof("response") == "response_headers"
    for i, chunk in enumerate(SSE):
        last = i == len(SSE) - 1
        (echo,) = stream.handle(response_body(chunk, last))
        streamed = echo.response_body.response.body_mutation.streamed_response
        assert (streamed.body, streamed.end_of_stream) == (chunk, last)
        assert in_flight(runtime)[A] == (0 if last else 1)
    stream.close(cancelled=False)  # the stream's end after the body's: nothing more happens
    text = runtime.metrics.render().decode()
    assert 'llm_picker_requests_total{outcome="completed"} 1.0' in text
    worker = ident(runtime, A)
    for kind, count in (("prompt", 7), ("completion", 2), ("cached", 4)):
        sample = f'llm_picker_worker_tokens_total{{kind="{kind}",worker="{worker}"}} {count}.0'
        assert sample in text
    assert f'llm_picker_worker_ttft_seconds_count{{worker="{worker}"}} 1.0' in text
    stats = runtime.registry.workers()[0].response
    assert stats.responses == 1 and stats.ttft_secs is not None and stats.per_chunk_secs is not None


def test_response_trailers_are_answered_after_the_body_and_end_the_request() -> None:
    runtime = make_router(A)
    stream, _ = routed(runtime)
    stream.handle(response_headers(content_type="application/json"))
    stream.handle(response_body(b'{"usage": {"prompt_tokens": 3}}', False))
    assert in_flight(runtime)[A] == 1
    trailers = pb.ProcessingRequest()
    trailers.response_trailers.SetInParent()
    (ack,) = stream.handle(trailers)
    assert ack.WhichOneof("response") == "response_trailers"
    assert in_flight(runtime)[A] == 0
    # A JSON answer has no first token to time: only its usage is learned.
    assert runtime.registry.workers()[0].response.ttft_secs is None


def test_cut_short_response_is_cancelled_and_the_slot_freed_once() -> None:
    runtime = make_router(A)
    stream, _ = routed(runtime)
    stream.handle(response_headers())
    stream.handle(response_body(SSE[0], False))
    stream.close(cancelled=True)
    stream.close(cancelled=True)
    assert in_flight(runtime)[A] == 0
    assert 'llm_picker_requests_total{outcome="cancelled"} 1.0' in runtime.metrics.render().decode()


def test_bodiless_response_ends_at_its_headers() -> None:
    runtime = make_router(A)
    stream, _ = routed(runtime)
    stream.handle(response_headers("503", end_of_stream=True))
    assert in_flight(runtime)[A] == 0
    assert 'outcome="upstream_error"' in runtime.metrics.render().decode()


def test_buffered_response_mode_is_acknowledged_without_a_mutation() -> None:
    runtime = make_router(A)
    stream = RequestStream(runtime.routing, 1 << 20)
    msg = headers_msg(duplex=False)
    msg.protocol_config.response_body_mode = pb.BUFFERED
    stream.handle(msg)
    stream.handle(body_msg(BODY, True))
    stream.handle(response_headers(content_type="application/json"))
    (ack,) = stream.handle(response_body(b'{"usage": {"completion_tokens": 5}}', True))
    assert ack.response_body.response == pb.CommonResponse()
    assert in_flight(runtime)[A] == 0
    text = runtime.metrics.render().decode()
    assert f'kind="completion",worker="{ident(runtime, A)}"}} 5.0' in text


def test_subset_hint_restricts_the_candidates() -> None:
    runtime = make_router(A, B, C)
    hint = {codec.SUBSET_NAMESPACE: {codec.SUBSET_KEY: [C]}}
    for _ in range(3):
        _, headers = routed(runtime, metadata=hint)
        assert destination(headers) == (C, C)


@pytest.mark.parametrize("subset", [[], ["10.0.0.9:8000"]])
def test_empty_or_foreign_subset_is_503(subset: list[str]) -> None:
    runtime = make_router(A, B)
    stream = RequestStream(runtime.routing, 1 << 20)
    stream.handle(duplex_both_ways(metadata={codec.SUBSET_NAMESPACE: {codec.SUBSET_KEY: subset}}))
    (reply,) = stream.handle(body_msg(BODY, True))
    assert reply.immediate_response.status.code == 503
    assert sum(in_flight(runtime).values()) == 0


def test_fallbacks_list_other_endpoints_after_the_pick_in_header_and_metadata() -> None:
    runtime = runtime_of(*(WorkerSpec(url=u, models=["m"]) for u in (A, B, C)),
                         extproc={"port": 0, "fallbacks": 1})
    _, headers = routed(runtime)
    header, metadata = destination(headers)
    primary, fallback = header.split(",")
    assert header == metadata and primary != fallback and {primary, fallback} <= {A, B, C}
    # Only the primary holds a slot until the response says otherwise.
    assert in_flight(runtime) == {A: 0, B: 0, C: 0} | {primary: 1}


def test_served_endpoint_metadata_moves_the_lease() -> None:
    runtime = runtime_of(*(WorkerSpec(url=u, models=["m"]) for u in (A, B)),
                         extproc={"port": 0, "fallbacks": 1})
    stream, headers = routed(runtime)
    primary, fallback = destination(headers)[0].split(",")
    stream.handle(response_headers(served=fallback))
    assert in_flight(runtime) == {primary: 0, fallback: 1}
    stream.handle(response_body(b"data: [DONE]\n\n", True))
    assert in_flight(runtime) == {primary: 0, fallback: 0}
    worker = {w.host_port: w for w in runtime.registry.workers()}[fallback]
    assert worker.response.responses == 1


@pytest.mark.parametrize("enabled", [False, True])
def test_conformance_hooks_only_when_enabled(enabled: bool) -> None:
    runtime = runtime_of(*(WorkerSpec(url=u, models=["m"]) for u in (A, B, C)),
                         extproc={"port": 0, "conformance": enabled})
    picks = set()
    for _ in range(3):
        stream, headers = routed(runtime, extra={CONFORMANCE_SELECTION_HEADER: B})
        picks.add(destination(headers)[0])
        (answer,) = stream.handle(response_headers(served=B))
        mutation = answer.response_headers.response.header_mutation
        reported = {o.header.key: o.header.raw_value for o in mutation.set_headers}
        assert reported == ({CONFORMANCE_SERVED_HEADER: B.encode()} if enabled else {})
    assert picks == ({B} if enabled else {A, B, C})


def test_model_body_with_usage_is_not_parsed_whole() -> None:
    """find_usage decodes only the usage value: a body that is not JSON elsewhere still works."""
    runtime = make_router(A)
    stream, _ = routed(runtime)
    stream.handle(response_headers(content_type="application/json"))
    tail = b'{"broken": [1, 2, "usage": {"prompt_tokens": 9, "completion_tokens": 1}}'
    stream.handle(response_body(tail, True))
    assert f'kind="prompt",worker="{ident(runtime, A)}"}} 9.0' in runtime.metrics.render().decode()



@pytest.mark.parametrize(("content_type", "length", "chunks"), [
    ("text/event-stream", None, SSE),  # all of the stream, [DONE] included
    ("application/json", "11", [b'{"a": 1}', b"   "]),  # all Content-Length bytes
])
def test_client_hanging_up_after_the_whole_answer_is_completed_not_cancelled(
        content_type: str, length: str | None, chunks: list[bytes]) -> None:
    runtime = make_router(A)
    stream, _ = routed(runtime)
    headers = response_headers(content_type=content_type)
    if length is not None:
        header = headers.response_headers.headers.headers.add()
        header.key, header.raw_value = "content-length", length.encode()
    stream.handle(headers)
    for chunk in chunks:
        stream.handle(response_body(chunk, False))
    stream.close(cancelled=True)  # the end-of-stream message never came
    assert 'outcome="completed"} 1.0' in runtime.metrics.render().decode()


@pytest.mark.parametrize(("workers", "hint", "expected"), [
    # declared by hostname: the hint names its resolved address (was a 503)
    (["http://localhost:8001"], ["127.0.0.1:8001"], {"w0"}),
    # another port at the hinted address: the reference picker matches the IP alone
    (["http://127.0.0.1:9001"], ["127.0.0.1:8001"], {"w0"}),
    # an exact address and port still narrows the subset among engines sharing a host
    (["http://127.0.0.1:8001", "http://127.0.0.1:8002"], ["127.0.0.1:8002"], {"w1"}),
    (["http://[::1]:8001"], ["[0:0::1]:8001"], {"w0"}),
    (["http://127.0.0.1:8001"], ["10.0.0.9:8001"], set()),
])
def test_subset_hint_matches_by_address_as_the_reference_picker(
        workers: list[str], hint: list[str], expected: set[str]) -> None:
    """llm-d-router pkg/epp/requestcontrol/candidates.go:132-156 compares the hint's address
    with each endpoint's IP (issue 31 item 7)."""
    runtime = runtime_of(*(WorkerSpec(url=u, id=f"w{i}", models=["m"])
                           for i, u in enumerate(workers)))
    assert SubsetMatcher().allowed(runtime.registry.workers(), hint) == expected
    stream = RequestStream(runtime.routing, 1 << 20)
    stream.handle(duplex_both_ways(metadata={codec.SUBSET_NAMESPACE: {codec.SUBSET_KEY: hint}}))
    (reply, *_) = stream.handle(body_msg(BODY, True))
    assert (reply.immediate_response.status.code == 503) == (not expected)


async def test_a_hostname_is_resolved_off_the_serving_loop(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """On the loop that serves every stream, a slow resolver must stall nothing: the blocking
    call is never made there; the loop's resolver thread fills the cache for later hints."""
    import socket

    def blocking(*_: object, **__: object) -> object:
        raise AssertionError("getaddrinfo called on the serving loop")

    runtime = runtime_of(WorkerSpec(url="http://localhost:8001", id="w0", models=["m"]))
    matcher = SubsetMatcher()
    monkeypatch.setattr(socket, "getaddrinfo", blocking)
    workers = runtime.registry.workers()
    assert matcher.allowed(workers, ["127.0.0.1:8001"]) == set()  # not known yet: a miss
    monkeypatch.undo()
    for _ in range(100):
        await asyncio.sleep(0.01)
        if matcher.allowed(workers, ["127.0.0.1:8001"]) == {"w0"}:
            break
    assert matcher.allowed(workers, ["127.0.0.1:8001"]) == {"w0"}


def test_a_zoned_ipv6_answer_keeps_the_other_addresses() -> None:
    matcher = SubsetMatcher()
    matcher._store("engine.local", [  # noqa: SLF001 - what getaddrinfo answers, as tuples
        (None, None, None, "", ("fe80::1%eth0", 0, 0, 2)), (None, None, None, "", ("10.0.0.5", 0))])
    assert matcher._addresses("engine.local") == {"engine.local", "fe80::1", "10.0.0.5"}  # noqa: SLF001


def test_the_first_response_chunk_ends_the_prompts_prefill_work() -> None:
    """Issue 35.3: with a response body mode the picker sees the first token pass, and the
    prompt stops counting as prefill ahead on the engine then, not at the response's end."""
    runtime = make_router(A)
    (worker,) = runtime.registry.workers()
    runtime.registry.observe(worker, Observation(prompt_tokens=100, cached_tokens=0,
                                                 ttft_secs=1.0))  # 100 tokens/s: work stays
    stream, _ = routed(runtime)
    assert worker.prefill_ahead(time.monotonic()) > 0.0
    stream.handle(response_headers())
    stream.handle(response_body(b'data: {"choices": []}\n\n', False))
    assert worker.prefill_ahead(time.monotonic()) == 0.0 and worker.in_flight == 1
    stream.handle(response_body(b"data: [DONE]\n\n", True))
    assert worker.in_flight == 0
