"""The step between choosing a prefill/decode pair and forwarding to its decode worker.

Each decode worker's protocol says how the pair learns about each other (picker.pd.protocols):
a sidecar in front of the decode engine is told the prefiller's address; SGLang's pair shares a
bootstrap room while the picker sends the prefill leg itself; vLLM's NIXL pair gets the KV
transfer parameters the prefill leg answered with. A gRPC pair (SMG's gRPC PD router) is
SGLang's bootstrap in the Generate call: the proxy sends the call to decode, the picker the
same call to prefill (`transcoded`). A prefill that fails raises PrefillFailed (and counts
against its worker), so the router can try another pair.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

from picker.errors import NoHealthyWorker
from picker.fleet.registry import Worker, WorkerRegistry
from picker.observe.metrics import PickerMetrics
from picker.pd.prefill import PrefillClient
from picker.pd.protocols import (
    PREFILLER_HEADER,
    REQUEST_ID_HEADER,
    Bootstrap,
    PdProtocol,
    grpc_bootstrap,
    nixl_prefill_body,
    protocol_of,
    with_bootstrap,
    with_kv_transfer_params,
)
from picker.routing import hops
from picker.routing.control_headers import HOP
from picker.routing.destination import Forward
from picker.routing.request import RoutingRequest

if TYPE_CHECKING:  # picker.grpc_route imports picker.pd
    from picker.grpc_route.transcoder import GrpcTranscoder

__all__ = ["PairStep"]


class PairStep:
    def __init__(self, workers: WorkerRegistry, metrics: PickerMetrics,
                 prefill_timeout_secs: float) -> None:
        self._workers = workers
        self._metrics = metrics
        self._prefill = PrefillClient(prefill_timeout_secs, self._prefill_failed)
        self._rng = random.Random()  # SGLang bootstrap rooms

    async def close(self) -> None:
        await self._prefill.close()

    async def forward(self, request: RoutingRequest, prefill: Worker,
                      decode: Worker) -> Forward:
        """Tell the pair about each other, as the decode worker's protocol says; what the
        proxy sends the decode worker instead of the client's request."""
        protocol = protocol_of(decode.spec)
        if protocol is PdProtocol.SIDECAR:
            return Forward(headers=((PREFILLER_HEADER, prefill.host_port),))
        data = request.body or {}
        path = request.api.value
        # One id on both legs: the client's (Envoy adds one when it sent none), else ours.
        sent = request.headers.get(REQUEST_ID_HEADER)
        request_id = sent or uuid.uuid4().hex
        headers = () if sent else ((REQUEST_ID_HEADER, request_id),)
        # The prefill call goes out from here, not through the proxy: it carries the hop list
        # itself, so a prefill worker that is the proxy sends it back to a refusal.
        onward = {REQUEST_ID_HEADER: request_id, HOP: hops.onward(request.headers)}
        if protocol is PdProtocol.SGLANG:
            pair = with_bootstrap(data, prefill.spec, decode.spec, self._rng)
            await self._prefill.dispatch(prefill, path, pair.prefill, onward)
            body = pair.decode
        else:
            params = await self._prefill.kv_transfer_params(
                prefill, path, nixl_prefill_body(data, request.api), onward)
            if params is None:
                return Forward(headers=headers)
            body = with_kv_transfer_params(data, params)
        return Forward(body=json.dumps(body, ensure_ascii=False).encode(), headers=headers)

    async def transcoded(self, prefill: Worker, decode: Worker,
                         transcoder: Callable[[Bootstrap], GrpcTranscoder]) -> GrpcTranscoder:
        """A gRPC pair: the decode worker's Generate call (made by `transcoder` with the pair's
        DisaggregatedParams), once the same call is under way to the prefill worker."""
        if protocol_of(decode.spec) is not PdProtocol.SGLANG:
            raise NoHealthyWorker(
                f"prefill/decode over gRPC is SGLang's bootstrap (SMG sends vLLM's gRPC pairs "
                f"kv_transfer_params, not served here): decode worker {decode.id!r} is "
                f"runtime_type {decode.spec.runtime_type.value}, not sglang")
        call = transcoder(grpc_bootstrap(prefill.spec, self._rng))
        await self._prefill.dispatch_generate(prefill, call.message)
        return call

    def _prefill_failed(self, worker: Worker) -> None:
        self._workers.record_outcome(worker, False)
        self._metrics.prefill_failures.labels(worker.id).inc()
