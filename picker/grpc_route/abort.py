"""Abort: a gRPC worker's generation the client left is stopped at the engine.

When the client goes away, Envoy resets the upstream stream; the picker also sends the engine's
Abort RPC with the Generate call's request_id (sglang_scheduler.proto:22, :381-384), as SMG's
gRPC client does for every Generate stream dropped before its end (lightseekorg/smg
crates/grpc_client/src/sglang_scheduler.rs, `AbortOnDropStream`'s Drop, reason "Stream
dropped"): an engine that missed the reset, or queued the request, frees it. A stop string
that ends a streamed answer while the engine generates on aborts the rest the same way. Sent in the
background from the caller's loop (the ext_proc server's, or LiteLLM's for its gRPC provider); a
failure is logged, never raised. grpc is imported on the first call, as in picker.fleet.grpc_calls.
"""

from __future__ import annotations

import asyncio
import logging

from picker.grpc_route._pb import generate_pb2 as pb

__all__ = ["ABORT_PATH", "Aborts"]

log = logging.getLogger("llm_picker.grpc")

ABORT_PATH = "/sglang.grpc.scheduler.SglangScheduler/Abort"
_TIMEOUT_SECS = 2.0


class Aborts:
    """The Abort calls in flight (kept referenced until they finish)."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    def send(self, host_port: str, request_id: str, reason: str) -> None:
        """Start the call on the running loop."""
        task = asyncio.get_running_loop().create_task(_abort(host_port, request_id, reason))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


async def _abort(host_port: str, request_id: str, reason: str) -> None:
    import grpc

    request = pb.AbortRequest(request_id=request_id, reason=reason)
    try:
        async with grpc.aio.insecure_channel(host_port) as channel:
            call = channel.unary_unary(ABORT_PATH,
                                       request_serializer=pb.AbortRequest.SerializeToString,
                                       response_deserializer=bytes)
            await call(request, timeout=_TIMEOUT_SECS)
    except grpc.aio.AioRpcError as exc:
        log.warning("Abort of request %s on %s failed: %s", request_id, host_port,
                    exc.code().name)
