"""Envoy's gRPC access-log service (StreamAccessLogs): where the authz mode learns requests ended.

Envoy keeps one client stream open per logger and sends batches of entries, flushed every
`buffer_flush_interval` (envoy/envoy-authz.yaml: 5 ms) or when the buffer fills; the cost of a
gRPC message is shared by every request in the batch, which is what makes this cheaper than an
ext_proc stream per request. The entries are decoded with the project's own minimal .proto
(authz/proto/als.proto, upstream field numbers) and handed to the Checker.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import grpc

from authz._pb import als_pb2 as pb
from authz.check import Checker
from authz.tokens import LEASE_HEADER

__all__ = ["SERVICE_NAME", "AccessLogService"]

SERVICE_NAME = "envoy.service.accesslog.v3.AccessLogService"


class AccessLogService:
    def __init__(self, checker: Checker) -> None:
        self._checker = checker

    def consume(self, message: pb.StreamAccessLogsMessage) -> int:
        """Release the leases a batch reports ended; returns how many it released."""
        released = 0
        now = time.time()
        for entry in message.http_logs.log_entry:
            token = entry.request.request_headers.get(LEASE_HEADER)
            if not token:
                continue  # denied, or not routed by this picker
            common = entry.common_properties
            lag = None
            if common.HasField("start_time") and common.HasField("duration"):
                ended = (common.start_time.seconds + common.start_time.nanos * 1e-9
                         + common.duration.seconds + common.duration.nanos * 1e-9)
                lag = now - ended
            released += self._checker.ended(
                token, entry.response.response_code.value,
                common.response_flags.downstream_connection_termination, lag)
        return released

    async def stream(self, messages: AsyncIterator[pb.StreamAccessLogsMessage],
                     _context: grpc.aio.ServicerContext) -> pb.StreamAccessLogsResponse:
        async for message in messages:
            self.consume(message)
        return pb.StreamAccessLogsResponse()

    def add_to(self, server: grpc.aio.Server) -> None:
        handler = grpc.method_handlers_generic_handler(SERVICE_NAME, {
            "StreamAccessLogs": grpc.stream_unary_rpc_method_handler(
                self.stream,
                request_deserializer=pb.StreamAccessLogsMessage.FromString,
                response_serializer=pb.StreamAccessLogsResponse.SerializeToString,
            ),
        })
        server.add_generic_rpc_handlers((handler,))
