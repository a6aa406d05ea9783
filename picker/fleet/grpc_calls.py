"""EngineCalls: the unary calls the picker makes to a gRPC engine's service for its signals.

A worker with `connection_mode: grpc` speaks its engine's gRPC service instead of HTTP: SGLang's
`sglang.grpc.scheduler.SglangScheduler` or vLLM's `vllm.grpc.engine.VllmEngine`, as
smg-grpc-proto 0.4.28 declares them (sglang_scheduler.proto:11-63, vllm_engine.proto:10-48).
Health checks, load polling, discovery and the prefill leg of a gRPC prefill/decode pair
(picker.pd.prefill) call it through here: one channel per worker (gRPC reconnects it with its
own backoff), a deadline on every call, and gRPC's errors translated at this boundary into
EngineCallFailed, an OSError like the HTTP paths' connection errors.

grpc is imported on the first call, not with this module: the core loads no gRPC module until a
worker speaks it (tests/unit/test_core_imports.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from picker.fleet._pb import engine_signals_pb2 as pb
from picker.fleet.worker_spec import RuntimeType, WorkerSpec

if TYPE_CHECKING:  # at run time imported by `generate`: picker.grpc_route imports picker.pd
    from picker.grpc_route._pb import generate_pb2

__all__ = ["SERVICES", "EngineCallFailed", "EngineCalls", "speaks_grpc"]

# The engine service each runtime serves. HealthCheck and GetLoads agree field for field
# between the two (picker/fleet/proto/engine_signals.proto); GetModelInfo and GetServerInfo are
# read from SGLang's only (vLLM numbers them differently).
SERVICES: Mapping[RuntimeType, str] = {
    RuntimeType.SGLANG: "sglang.grpc.scheduler.SglangScheduler",
    RuntimeType.VLLM: "vllm.grpc.engine.VllmEngine",
}

_Answer = TypeVar("_Answer")


class EngineCallFailed(ConnectionError):
    """A call to a worker's gRPC service failed: its status and details, or no such service.
    `status`: the gRPC status code's name (e.g. "OUT_OF_RANGE"), `code` its number; None when
    no call was made. `details`: the engine's message alone (the message names the url)."""

    def __init__(self, message: str, status: str | None = None, code: int | None = None,
                 details: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.details = details


def speaks_grpc(spec: WorkerSpec) -> bool:
    """Whether the picker knows the gRPC service of this worker's engine."""
    return spec.runtime_type in SERVICES


class EngineCalls:
    """Channels to gRPC workers, one per worker url, opened on first use; `close` (or
    `forget` for one worker) ends them. Used on one event loop."""

    def __init__(self) -> None:
        self._channels: dict[str, Any] = {}
        self._closing: set[asyncio.Task[None]] = set()

    async def health(self, spec: WorkerSpec, timeout: float) -> pb.HealthCheckResponse:
        return await self._call(spec, "HealthCheck", pb.HealthCheckRequest(),
                                pb.HealthCheckResponse, timeout)

    async def loads(self, spec: WorkerSpec, timeout: float) -> pb.GetLoadsResponse:
        """This worker's rank's loads when it is one rank of a data-parallel engine, else
        every rank's (GetLoadsRequest.dp_rank, sglang_scheduler.proto:573-574)."""
        request = pb.GetLoadsRequest(include=["core"])
        if spec.dp_rank is not None:
            request.dp_rank = spec.dp_rank
        return await self._call(spec, "GetLoads", request, pb.GetLoadsResponse, timeout)

    async def model_info(self, spec: WorkerSpec, timeout: float) -> pb.GetModelInfoResponse:
        self._sglang_only(spec, "GetModelInfo")
        return await self._call(spec, "GetModelInfo", pb.GetModelInfoRequest(),
                                pb.GetModelInfoResponse, timeout)

    async def server_info(self, spec: WorkerSpec, timeout: float) -> pb.GetServerInfoResponse:
        self._sglang_only(spec, "GetServerInfo")
        return await self._call(spec, "GetServerInfo", pb.GetServerInfoRequest(),
                                pb.GetServerInfoResponse, timeout)

    def tokenizer_chunks(self, spec: WorkerSpec) -> AsyncIterator[pb.GetTokenizerChunk]:
        """GetTokenizer's stream (sglang_scheduler.proto:45, vllm_engine.proto:44); the caller
        bounds its time."""
        return self._stream(spec, "GetTokenizer", pb.GetTokenizerRequest(),
                            pb.GetTokenizerChunk)

    def kv_events(self, spec: WorkerSpec, start: int) -> AsyncIterator[pb.KvEventBatch]:
        """SubscribeKvEvents from sequence `start` (0: live from now on; sglang_scheduler.proto
        :48-49, vllm_engine.proto:47-48); it runs until the engine ends it or the caller
        stops reading."""
        request = pb.SubscribeKvEventsRequest(start_sequence_number=start)
        return self._stream(spec, "SubscribeKvEvents", request, pb.KvEventBatch)

    def generate(self, spec: WorkerSpec, request: bytes,
                 ) -> AsyncIterator[generate_pb2.GenerateResponse]:
        """A Generate stream (sglang_scheduler.proto:13-14, SGLang's service only) for a
        GenerateRequest serialized already (GrpcTranscoder.message); the caller bounds its
        time."""
        from picker.grpc_route._pb import generate_pb2

        self._sglang_only(spec, "Generate")
        return self._stream(spec, "Generate", request, generate_pb2.GenerateResponse)

    def forget(self, spec: WorkerSpec) -> None:
        """Close the worker's channel (it was removed); safe when it has none."""
        channel = self._channels.pop(spec.url, None)
        if channel is not None:
            task = asyncio.get_running_loop().create_task(channel.close())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        channels, self._channels = list(self._channels.values()), {}
        await asyncio.gather(*(c.close() for c in channels), *self._closing,
                             return_exceptions=True)

    @staticmethod
    def _sglang_only(spec: WorkerSpec, method: str) -> None:
        if spec.runtime_type is not RuntimeType.SGLANG:
            raise EngineCallFailed(f"{method} is read from SGLang's gRPC service only, and "
                                   f"{spec.url} is runtime_type {spec.runtime_type.value}")

    async def _call(self, spec: WorkerSpec, method: str, request: Any,
                    answer: type[_Answer], timeout: float) -> _Answer:
        import grpc

        call = self._channel(spec).unary_unary(
            _path(spec, method), request_serializer=type(request).SerializeToString,
            response_deserializer=answer.FromString)  # type: ignore[attr-defined]
        try:
            result: _Answer = await call(request, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            raise _failed(spec, method, exc) from exc
        return result

    async def _stream(self, spec: WorkerSpec, method: str, request: Any,
                      answer: type[_Answer]) -> AsyncIterator[_Answer]:
        """`request`: a message, or its bytes (sent as they are)."""
        import grpc

        call = self._channel(spec).unary_stream(
            _path(spec, method), request_serializer=None if isinstance(request, bytes)
            else type(request).SerializeToString,
            response_deserializer=answer.FromString)  # type: ignore[attr-defined]
        stream = call(request)
        try:
            async for message in stream:
                yield message
        except grpc.aio.AioRpcError as exc:
            raise _failed(spec, method, exc) from exc
        finally:
            stream.cancel()

    def _channel(self, spec: WorkerSpec) -> Any:
        import grpc

        channel = self._channels.get(spec.url)
        if channel is None:
            target = spec.host_port
            if spec.network_url.startswith("grpcs://"):
                channel = grpc.aio.secure_channel(target, grpc.ssl_channel_credentials())
            else:
                channel = grpc.aio.insecure_channel(target)
            self._channels[spec.url] = channel
        return channel


def _path(spec: WorkerSpec, method: str) -> str:
    service = SERVICES.get(spec.runtime_type)
    if service is None:
        raise EngineCallFailed(f"no gRPC service is known for runtime_type "
                               f"{spec.runtime_type.value} ({spec.url})")
    return f"/{service}/{method}"


def _failed(spec: WorkerSpec, method: str, exc: Any) -> EngineCallFailed:
    return EngineCallFailed(f"{method} on {spec.url}: {exc.code().name} "
                            f"{exc.details() or ''}"[:300], exc.code().name, exc.code().value[0],
                            (exc.details() or "")[:300])
