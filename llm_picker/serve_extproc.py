"""`llm-picker serve`: the ext_proc gRPC server in front of a PickerRuntime, on one event loop."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from extproc.health import HealthService, health_server
from extproc.server import SERVICE_NAME, create_server
from llm_picker.stopping import stop_on_signals
from picker.config import PickerConfig
from picker.observe.access_log import AccessLog
from picker.processes.group import ProcessGroup
from picker.runtime import Host, PickerRuntime

__all__ = ["serve"]

log = logging.getLogger("llm_picker")


async def serve(
    config: PickerConfig,
    config_path: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    group: ProcessGroup | None = None,
) -> None:
    """Run until SIGTERM/SIGINT; with `config_path`, follow the file (SIGHUP or change).
    `group`: this process's place in `serve --workers N`.

    A busy ext_proc or admin port is an OSError naming it, before anything serves."""
    runtime = PickerRuntime(config, Host.SERVE, config_path, overrides, group)
    health = HealthService(runtime, SERVICE_NAME)
    extproc = config.extproc
    grpc_server, grpc_port = create_server(
        runtime.routing, extproc.host, extproc.port, config.max_body_bytes, extproc.tls,
        AccessLog() if config.log.access else None, health, extproc.fallbacks,
        extproc.conformance,
    )
    health_port = config.extproc.health_port
    probes = None if health_port is None else health_server(health, config.extproc.host,
                                                            health_port)
    stop = asyncio.Event()
    stop_on_signals(stop, lambda: runtime.leases.active)
    loop = asyncio.get_running_loop()
    if not await runtime.start_unless(stop):
        return
    try:
        await health.start()
        await grpc_server.start()
        if probes is not None:
            await probes[0].start()
        admin = (f"admin on {config.admin.host}:{runtime.admin_port}"
                 if runtime.admin_port is not None
                 else "admin in process 0" if group is not None and not group.primary
                 else "admin off")
        log.info(
            "llm-picker serving%s: ext_proc on %s:%d (%s)%s, %s, policy %s, %d workers, "
            "event loop %s",
            "" if group is None else f" (process {group.index} of {group.count})",
            config.extproc.host, grpc_port, _transport(config),
            "" if probes is None else f", gRPC health on {config.extproc.host}:{probes[1]}",
            admin, config.policy.name,
            len(runtime.routing.workers()), type(loop).__module__.partition(".")[0],
        )
        await stop.wait()
    finally:
        # Graceful shutdown: /ready turns 503 at once; requests in flight get the grace
        # period to finish (their streams end normally); then everything stops.
        await health.stop()
        await runtime.stop(config.limits.shutdown_grace_secs,
                           config.limits.shutdown_delay_secs)
        await grpc_server.stop(1.0)
        if probes is not None:  # last: probes see NOT_SERVING until the end, not a refusal
            await probes[0].stop(None)


def _transport(config: PickerConfig) -> str:
    """How Envoy reaches the ext_proc port, for the start-up line."""
    tls = config.extproc.tls
    if tls is None:
        return "plaintext"
    if tls == "self_signed":
        return "TLS, self-signed"
    return "mutual TLS" if config.extproc.authenticates_clients else "TLS"
