"""gRPC Health Checking on the ext_proc port, with the services the Endpoint Picker Protocol names.

Gateways and Kubernetes probe an endpoint picker with the standard grpc.health.v1 service:

  liveness                                     the process answers (SERVING while not draining)
  readiness                                    PickerRuntime.ready: a worker is routable,
                                               discovery synced, not draining
  envoy.service.ext_proc.v3.ExternalProcessor  same as readiness: ext_proc can route
  inference-extension                          same as readiness: what the Gateway API Inference
                                               Extension's inferencepool chart probes with one
                                               replica (v1.5.0 config/charts/epplib/templates/
                                               _deployment.yaml:160-181)

The picker has no leader election, so a replica that can route is ready. Statuses are recomputed
on a short period rather than per check, so Watch streams see changes too. They are served on
the ext_proc port, and with `extproc.health_port` also on a plaintext port of their own
(`health_server`): Kubernetes gRPC probes speak no TLS.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from picker.listen import check_free

__all__ = ["INFERENCE_EXTENSION", "LIVENESS", "READINESS", "HealthService", "Readiness",
           "health_server"]

LIVENESS = "liveness"
READINESS = "readiness"
INFERENCE_EXTENSION = "inference-extension"
_PERIOD_SECS = 0.25
_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Readiness(Protocol):
    """What the health services read of the picker (its runtime): nothing else."""

    @property
    def ready(self) -> bool: ...

    @property
    def draining(self) -> bool: ...


class HealthService:
    def __init__(self, runtime: Readiness, ext_proc_service: str) -> None:
        self._runtime = runtime
        self._ready_services = (READINESS, INFERENCE_EXTENSION, ext_proc_service)
        self._servicer = health.aio.HealthServicer()
        self._task: asyncio.Task[None] | None = None

    def add_to(self, server: grpc.aio.Server) -> None:
        health_pb2_grpc.add_HealthServicer_to_server(self._servicer, server)

    async def start(self) -> None:
        await self._update()
        self._task = asyncio.create_task(self._follow())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._servicer.enter_graceful_shutdown()

    async def _follow(self) -> None:
        while True:
            await asyncio.sleep(_PERIOD_SECS)
            await self._update()

    async def _update(self) -> None:
        draining = self._runtime.draining
        ready = self._runtime.ready
        await self._servicer.set(LIVENESS, _NOT_SERVING if draining else _SERVING)
        for service in self._ready_services:
            await self._servicer.set(service, _SERVING if ready else _NOT_SERVING)


def health_server(health: HealthService, host: str, port: int) -> tuple[grpc.aio.Server, int]:
    """A plaintext server of the health services alone, bound to host:port (0: a free port)
    and not yet started; returns the port."""
    check_free(host, port, "extproc.health_port")  # gRPC's SO_REUSEPORT would share it
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    health.add_to(server)
    try:
        bound = server.add_insecure_port(f"{host}:{port}")
    except RuntimeError as exc:  # taken between the check and the bind
        raise OSError(f"extproc.health_port cannot listen on {host}:{port}") from exc
    return server, bound
