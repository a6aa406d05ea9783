"""The gRPC prefill leg (picker.pd.prefill.PrefillClient.dispatch_generate) against a real
gRPC server on loopback: what the engine says decides between "the client's fault" and "try
another pair", as on the HTTP path; and the gRPC pairs the pair step does not serve."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from smg_grpc_proto.generated import sglang_scheduler_pb2 as upstream

from picker.errors import NoHealthyWorker, PrefillFailed, PrefillRejected, RequestError
from picker.fleet.registry import Worker, WorkerRegistry
from picker.fleet.worker_spec import WorkerSpec
from picker.grpc_route._pb import generate_pb2 as pb
from picker.grpc_route.transcoder import GrpcTranscoder
from picker.observe.metrics import PickerMetrics
from picker.pd.pairing import PairStep
from picker.pd.prefill import PrefillClient
from picker.pd.protocols import Bootstrap
from picker_bench.stack import free_port

SERVICE = "sglang.grpc.scheduler.SglangScheduler"


async def serve(answer: grpc.StatusCode | None, received: list[Any]) -> tuple[Any, int]:
    """A Generate that records the call, then fails with `answer` or streams a completion."""

    async def generate(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        received.append(request)
        if answer is not None:
            await context.abort(answer, "prompt longer than the context")
        yield upstream.GenerateResponse(request_id=request.request_id,
                                        complete=upstream.GenerateComplete(finish_reason="length"))

    handler = grpc.unary_stream_rpc_method_handler(
        generate, request_deserializer=upstream.GenerateRequest.FromString,
        response_serializer=upstream.GenerateResponse.SerializeToString)
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        SERVICE, {"Generate": handler}),))
    port = free_port()
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    return server, port


def worker(port: int) -> Worker:
    return WorkerRegistry().add(WorkerSpec.model_validate(
        {"url": f"grpc://127.0.0.1:{port}", "id": "p0", "connection_mode": "grpc",
         "runtime_type": "sglang",
         "worker_type": "prefill"}))


def call() -> bytes:
    return pb.GenerateRequest(request_id="r1", tokenized=pb.TokenizedInput(input_ids=[1, 2]),
                              disaggregated_params=pb.DisaggregatedParams(
                                  bootstrap_host="127.0.0.1", bootstrap_port=8998,
                                  bootstrap_room=7)).SerializeToString()


async def test_the_engine_gets_the_call_and_its_failure_counts_against_it() -> None:
    received: list[Any] = []
    blamed: list[str] = []
    server, port = await serve(None, received)
    client = PrefillClient(5.0, lambda w: blamed.append(w.id))
    try:
        await client.dispatch_generate(worker(port), call())
        await server.stop(grace=1.0)  # waits for the call under way
        assert [r.disaggregated_params.bootstrap_room for r in received] == [7]
        assert blamed == []
        with pytest.raises(PrefillFailed, match="UNAVAILABLE"):  # nothing listens any more
            await client.dispatch_generate(worker(port), call())
        assert blamed == ["p0"]
    finally:
        await client.close()


@pytest.mark.parametrize(("status", "error", "http"), [
    (grpc.StatusCode.INVALID_ARGUMENT, PrefillRejected, 400),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, PrefillFailed, 503),  # overload: the engine's
    (grpc.StatusCode.INTERNAL, PrefillFailed, 503)])
async def test_a_refusal_is_the_clients_and_a_fault_the_engines(
        status: grpc.StatusCode, error: type[RequestError], http: int) -> None:
    blamed: list[str] = []
    server, port = await serve(status, [])
    client = PrefillClient(5.0, lambda w: blamed.append(w.id))
    try:
        with pytest.raises(error) as caught:
            await client.dispatch_generate(worker(port), call())
        assert caught.value.status == http
        assert bool(blamed) is (error is PrefillFailed)
        if error is PrefillRejected:
            assert "prompt longer than the context" in str(caught.value)
            assert "127.0.0.1" not in str(caught.value)
    finally:
        await client.close()
        await server.stop(grace=None)


async def test_a_grpc_pair_of_vllm_engines_is_refused_naming_the_runtime() -> None:
    """SMG pairs vLLM's gRPC engines with kv_transfer_params (request_execution.rs:260-275),
    which this router does not send: a 503 that says so, and no prefill sent."""
    registry = WorkerRegistry()
    prefill, decode = (registry.add(WorkerSpec.model_validate(
        {"url": f"grpc://127.0.0.1:{port}", "id": role, "connection_mode": "grpc",
         "runtime_type": "vllm", "worker_type": role})) for role, port in
        (("prefill", 1001), ("decode", 1002)))
    pairs = PairStep(registry, PickerMetrics(registry), 5.0)

    def never(_: Bootstrap) -> GrpcTranscoder:
        raise AssertionError("no call is made for a pair it cannot serve")

    try:
        with pytest.raises(NoHealthyWorker, match="runtime_type vllm, not sglang"):
            await pairs.transcoded(prefill, decode, never)
    finally:
        await pairs.close()
