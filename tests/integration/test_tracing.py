"""Tracing through real parts: a client's trace context -> real Envoy -> `llm-picker serve`
(tracing.enabled) -> an engine, with the picker's span exported over OTLP/gRPC to a receiver
in this test (the opentelemetry-proto TraceService, served with grpc on loopback)."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from picker.observe.tracing import SPAN_NAME
from picker_bench.loopback import loopback
from picker_bench.stack import local_fleet
from tests.http_stub import StubServer
from tests.integration.conftest import MODEL, wait_until

PROMPT = "a prompt no trace may carry 7d1e"


class _Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP trace receiver: keeps every span exported to it, and the raw requests."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.raw: list[bytes] = []
        self._lock = threading.Lock()

    def Export(self, request: trace_service_pb2.ExportTraceServiceRequest,  # noqa: N802
               context: grpc.ServicerContext) -> trace_service_pb2.ExportTraceServiceResponse:
        with self._lock:
            self.raw.append(request.SerializeToString())
            for resource in request.resource_spans:
                for scope in resource.scope_spans:
                    self.spans.extend(scope.spans)
        return trace_service_pb2.ExportTraceServiceResponse()

    def routed(self) -> list[Span]:
        """The picker's decision spans (FastAPI traces the admin API's requests as well)."""
        with self._lock:
            return [span for span in self.spans if span.name == SPAN_NAME]


@pytest.fixture
def receiver() -> Iterator[tuple[_Receiver, int]]:
    found = _Receiver()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(found, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield found, port
    server.stop(None)


def test_the_engine_continues_the_clients_trace_as_a_child_of_the_pickers_span(
        receiver: tuple[_Receiver, int], monkeypatch: pytest.MonkeyPatch) -> None:
    spans, otlp_port = receiver
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{otlp_port}")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_INSECURE", "true")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")  # export within 50 ms, not 5 s
    engine = StubServer()
    trace_id, client_span = secrets.token_hex(16), secrets.token_hex(8)
    try:
        with local_fleet([], picker_settings={
                "workers": [{"url": engine.url, "id": "engine", "models": [MODEL]}],
                "tracing": {"enabled": True}, "health": {"enabled": False},
                "load": {"enabled": False}}) as fleet:
            response = loopback().post(
                f"{fleet.envoy_url}/v1/chat/completions", timeout=10,
                headers={"traceparent": f"00-{trace_id}-{client_span}-01",
                         "tracestate": "vendor=kept"},
                json={"model": MODEL, "messages": [{"role": "user", "content": PROMPT}]})
            assert response.status_code == 200, response.text
            wait_until(spans.routed, timeout=10, what="the picker's span exported")
    finally:
        engine.close()
    [(_, sent, _)] = engine.posts
    version, seen_trace, parent, flags = sent["traceparent"].split("-")
    assert (version, seen_trace, flags) == ("00", trace_id, "01")  # the client's trace
    assert sent["tracestate"] == "vendor=kept"
    [span] = spans.routed()
    assert span.trace_id.hex() == trace_id
    assert span.parent_span_id.hex() == client_span  # the picker's span: the client's child
    assert span.span_id.hex() == parent  # ...and the engine's request: the picker's child
    attributes = {a.key: a.value for a in span.attributes}
    assert attributes["llm_picker.policy"].string_value == "round_robin"
    assert attributes["llm_picker.worker"].string_value == "engine"
    assert attributes["llm_picker.outcome"].string_value == "completed"
    assert attributes["llm_picker.queue_wait_ms"].double_value >= 0
    assert attributes["gen_ai.request.model"].string_value == MODEL
    assert not any(PROMPT.encode() in raw for raw in spans.raw)


def test_without_a_client_trace_the_pickers_span_starts_one_the_engine_continues(
        receiver: tuple[_Receiver, int], monkeypatch: pytest.MonkeyPatch) -> None:
    spans, otlp_port = receiver
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{otlp_port}")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_INSECURE", "true")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
    engine = StubServer()
    try:
        with local_fleet([], picker_settings={
                "workers": [{"url": engine.url, "id": "engine", "models": [MODEL]}],
                "tracing": {"enabled": True}, "health": {"enabled": False},
                "load": {"enabled": False}}) as fleet:
            assert loopback().post(f"{fleet.envoy_url}/v1/chat/completions", timeout=10, json={
                "model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
                ).status_code == 200
            wait_until(spans.routed, timeout=10, what="the picker's span exported")
    finally:
        engine.close()
    [(_, sent, _)] = engine.posts
    [span] = spans.routed()
    assert not span.parent_span_id  # a root: there was no trace to continue
    context, flags = sent["traceparent"].rsplit("-", 1)
    assert context == f"00-{span.trace_id.hex()}-{span.span_id.hex()}"
    assert int(flags, 16) & 1  # sampled (the SDK may set W3C's random-trace-id flag too)


