"""Abort: a gRPC worker's generation the client left is stopped at the engine.

When the client goes away, Envoy resets the upstream stream; the picker also sends the engine's
Abort RPC with the Generate call's request_id (SGLang: sglang_scheduler.proto:22, :381-384;
vLLM: vllm_engine.proto:30, :379-381; the message is the engine's, picker.grpc_route.engines),
as SMG's gRPC clients do for every Generate stream dropped before its end (lightseekorg/smg
crates/grpc_client/src/sglang_scheduler.rs and vllm_engine.rs:35-43, `AbortOnDropStream`'s
Drop, reason "Stream dropped"): an engine that missed the reset, or queued the request, frees
it. A stop string that ends a streamed answer while the engine generates on aborts the rest the
same way. Sent in the background from the caller's loop (the ext_proc server's, or LiteLLM's for
its gRPC provider); a failure is logged, never raised. grpc is imported on the first call, as in
picker.fleet.grpc_calls.
"""

from __future__ import annotations

import asyncio
import logging
from typing import NamedTuple

__all__ = ["AbortCall", "Aborts"]

log = logging.getLogger("llm_picker.grpc")

_TIMEOUT_SECS = 2.0


class AbortCall(NamedTuple):
    """One engine's Abort for one request: its method path and serialized AbortRequest."""

    path: str
    message: bytes
    request_id: str


class Aborts:
    """The Abort calls in flight (kept referenced until they finish)."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    def send(self, host_port: str, call: AbortCall) -> None:
        """Start the call on the running loop."""
        task = asyncio.get_running_loop().create_task(_abort(host_port, call))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


async def _abort(host_port: str, call: AbortCall) -> None:
    import grpc

    try:
        async with grpc.aio.insecure_channel(host_port) as channel:
            method = channel.unary_unary(call.path, response_deserializer=bytes)
            await method(call.message, timeout=_TIMEOUT_SECS)
    except grpc.aio.AioRpcError as exc:
        log.warning("Abort of request %s on %s failed: %s", call.request_id, host_port,
                    exc.code().name)
