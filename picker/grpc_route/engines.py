"""Each engine's gRPC service as the router speaks it: one small adapter per runtime_type.

SGLang's `sglang.grpc.scheduler.SglangScheduler` and vLLM's `vllm.grpc.engine.VllmEngine`
(smg-grpc-proto 0.4.28) carry the same call in messages that differ in names, numbers and
defaults. A `GrpcEngine` holds what differs: the method paths, how a `GenerateCall` becomes the
engine's GenerateRequest, how its GenerateResponses are read, its AbortRequest, and whether a
streamed chunk's counts are cumulative (SGLang) or this chunk's own (vLLM: SMG
model_gateway/src/routers/grpc/common/response_formatting.rs:28-64, `CompletionTokenTracker`).
The transcoder and the answer are the same for both; they see the messages through the
`Response` protocol, which both generated classes satisfy.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from picker.errors import RequestError
from picker.fleet.grpc_calls import SERVICES
from picker.fleet.worker_spec import RuntimeType, WorkerSpec
from picker.grpc_route._pb import generate_pb2 as sglang
from picker.grpc_route._pb import vllm_generate_pb2 as vllm
from picker.grpc_route.request import GenerateCall, Sampling

__all__ = ["ENGINES", "Complete", "GrpcEngine", "Response", "StreamChunk",
           "UnservedRuntime", "engine_for"]


class _Counts(Protocol):
    """The token counts both kinds of message carry."""

    @property
    def prompt_tokens(self) -> int: ...
    @property
    def completion_tokens(self) -> int: ...
    @property
    def cached_tokens(self) -> int: ...


class StreamChunk(_Counts, Protocol):
    @property
    def token_ids(self) -> Sequence[int]: ...


class Complete(_Counts, Protocol):
    @property
    def output_ids(self) -> Sequence[int]: ...
    @property
    def finish_reason(self) -> str: ...


class Response(Protocol):
    """A GenerateResponse of either service: a chunk or the complete answer."""

    def WhichOneof(self, oneof_group: Literal["response"]) -> str | None: ...  # noqa: N802
    @property
    def chunk(self) -> StreamChunk: ...
    @property
    def complete(self) -> Complete: ...


class UnservedRuntime(RequestError):
    """A gRPC worker whose engine's Generate service the router does not speak."""

    status = 503
    code = "grpc_runtime_not_served"
    error_type = "service_unavailable_error"


@dataclass(frozen=True, slots=True)
class GrpcEngine:
    """One service's calls: `request` writes a GenerateCall as its GenerateRequest, `response`
    reads one GenerateResponse, `abort` writes the AbortRequest for (request_id, reason)."""

    generate_path: str
    abort_path: str
    counts_are_deltas: bool
    request: Callable[[GenerateCall], bytes]
    response: Callable[[bytes], Response]
    abort: Callable[[str, str], bytes]


# SGLang's defaults for what the request leaves out (sglang_scheduler.proto:70-74: proto3's
# zero is not its default; sglang/srt/sampling/sampling_params.py: temperature 1.0, top_k -1).
_SGLANG_TEMPERATURE, _SGLANG_TOP_K = 1.0, -1


def _shared(sampling: Sampling) -> dict[str, Any]:
    """The sampling fields both services name and take as the request gives them."""
    return {"top_p": sampling.top_p, "min_p": sampling.min_p,
            "frequency_penalty": sampling.frequency_penalty,
            "presence_penalty": sampling.presence_penalty,
            "repetition_penalty": sampling.repetition_penalty, "stop": sampling.stop,
            "skip_special_tokens": sampling.skip_special_tokens,
            "spaces_between_special_tokens": sampling.spaces_between_special_tokens,
            "ignore_eos": sampling.ignore_eos, "n": 1}


def _sglang_request(call: GenerateCall) -> bytes:
    sampling = call.sampling
    params = sglang.SamplingParams(
        temperature=_SGLANG_TEMPERATURE if sampling.temperature is None
        else sampling.temperature,
        top_k=_SGLANG_TOP_K if sampling.top_k is None else sampling.top_k, **_shared(sampling))
    if sampling.max_tokens is not None:
        params.max_new_tokens = sampling.max_tokens
    message = sglang.GenerateRequest(
        request_id=call.request_id, tokenized=sglang.TokenizedInput(input_ids=call.input_ids),
        sampling_params=params, stream=call.stream)
    if call.bootstrap is not None:
        message.disaggregated_params.CopyFrom(sglang.DisaggregatedParams(
            bootstrap_host=call.bootstrap.host, bootstrap_port=call.bootstrap.port,
            bootstrap_room=call.bootstrap.room))
    data: bytes = message.SerializeToString()
    return data


def _vllm_request(call: GenerateCall) -> bytes:
    """As SMG builds it (crates/grpc_client/src/vllm_engine.rs:216-262 for chat, :518-555 for
    completions): temperature only when the request sets it (unset is the servicer's 1.0),
    top_k clamped to 0 and up (0 is "disabled" in vLLM, :239)."""
    # picker.pd.pairing sends only SGLang pairs over gRPC (vLLM's carry kv_transfer_params).
    assert call.bootstrap is None, "a vLLM gRPC call has no DisaggregatedParams"
    sampling = call.sampling
    params = vllm.SamplingParams(top_k=max(0, sampling.top_k or 0), **_shared(sampling))
    if sampling.temperature is not None:
        params.temperature = sampling.temperature
    if sampling.max_tokens is not None:
        params.max_tokens = sampling.max_tokens
    data: bytes = vllm.GenerateRequest(
        request_id=call.request_id, tokenized=vllm.TokenizedInput(input_ids=call.input_ids),
        sampling_params=params, stream=call.stream).SerializeToString()
    return data


def _path(runtime: RuntimeType, method: str) -> str:
    """The method's HTTP/2 path, /<package>.<service>/<method> (grpc doc/PROTOCOL-HTTP2.md
    "Path"); Envoy routes each service's prefix to its HTTP/2 worker cluster."""
    return f"/{SERVICES[runtime]}/{method}"


ENGINES: Mapping[RuntimeType, GrpcEngine] = {
    RuntimeType.SGLANG: GrpcEngine(
        _path(RuntimeType.SGLANG, "Generate"), _path(RuntimeType.SGLANG, "Abort"),
        counts_are_deltas=False, request=_sglang_request,
        response=sglang.GenerateResponse.FromString,
        abort=lambda rid, reason: sglang.AbortRequest(
            request_id=rid, reason=reason).SerializeToString()),
    # SMG sends vLLM's Abort with the one id and drops the reason (crates/grpc_client/src/
    # vllm_engine.rs:79-91).
    RuntimeType.VLLM: GrpcEngine(
        _path(RuntimeType.VLLM, "Generate"), _path(RuntimeType.VLLM, "Abort"),
        counts_are_deltas=True, request=_vllm_request,
        response=vllm.GenerateResponse.FromString,
        abort=lambda rid, _reason: vllm.AbortRequest(request_ids=[rid]).SerializeToString()),
}


def engine_for(spec: WorkerSpec) -> GrpcEngine:
    """The service a gRPC worker's requests go to, by its runtime_type."""
    engine = ENGINES.get(spec.runtime_type)
    if engine is None:
        raise UnservedRuntime(
            f"gRPC worker {spec.id!r} is runtime_type {spec.runtime_type.value}: the picker "
            f"sends Generate calls to {' and '.join(r.value for r in ENGINES)} engines only")
    return engine
