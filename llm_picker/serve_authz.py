"""`llm-picker serve --mode authz`: ext_authz check server and access-log service, one loop.

The ext_authz HTTP check server and the access-log gRPC service in front of one PickerRuntime,
on one asyncio loop.

The gRPC port (extproc.host/port) carries the access-log stream instead of ext_proc streams;
the check server listens on its own port (`--authz-port`). extproc.tls covers both (extproc.tls):
with a client CA, only a client with a certificate from it - Envoy - is served on either.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import grpc

from authz.als import AccessLogService
from authz.check import Checker
from authz.http import serve_http
from authz.tokens import process_prefix
from extproc.tls import grpc_credentials, ssl_context
from llm_picker.stopping import stop_on_signals
from picker.config import PickerConfig
from picker.errors import ConfigError
from picker.listen import TlsConfig, check_free, listen_socket
from picker.processes.group import ProcessGroup
from picker.runtime import Host, PickerRuntime

__all__ = ["serve_authz"]

log = logging.getLogger("llm_picker")

# How often tokens of leases the book expired (their log entry never came) are dropped.
_SWEEP_SECS = 30.0


async def _sweep(checker: Checker) -> None:
    while True:
        await asyncio.sleep(_SWEEP_SECS)
        checker.forget_released()


def _lag_summary(checker: Checker) -> str:
    lags = sorted(checker.lags)
    if len(lags) < 2:
        return "release lag: too few samples"
    cuts = statistics.quantiles(lags, n=100)
    return (f"release lag after the response ended (last {len(lags)}): p50 "
            f"{cuts[49] * 1e3:.2f} ms, p99 {cuts[98] * 1e3:.2f} ms, max {lags[-1] * 1e3:.2f} ms")


def _security(tls: TlsConfig | None) -> str:
    if tls is None:
        return "plaintext"
    return "mutual TLS" if tls.client_ca_file is not None else "TLS"


async def serve_authz(
    config: PickerConfig, authz_port: int, config_path: Path | None = None,
    overrides: Mapping[str, Any] | None = None, group: ProcessGroup | None = None,
) -> None:
    """Run until SIGTERM/SIGINT. A busy port is an OSError naming it, before anything serves.

    `group`: this process's place in `serve --workers N`: its check server listens on
    `authz_port` + i (its access-log gRPC port is already extproc.port + i), and its lease
    tokens carry its prefix so that Envoy logs each request to the process holding it."""
    # extproc.tls covers both ports here (extproc.tls): with a client CA only Envoy, holding
    # a client certificate, completes a handshake, so it alone reads the worker keys in the
    # checks' answers; without one, keys need the explicit opt-out.
    tls = config.extproc.tls
    if tls == "self_signed":
        raise ConfigError("extproc.tls", "--mode authz serves a standalone Envoy, which can "
                          "verify the picker: give cert_file and key_file (and client_ca_file "
                          "for mutual TLS) instead of self_signed")
    keyed = [i for i, spec in enumerate(config.workers) if spec.api_key is not None]
    if keyed and config.extproc.worker_keys_problem() is not None:
        raise ConfigError(f"workers.{keyed[0]}.api_key", "--mode authz answers checks with the "
                          "worker's key in them, to any client completing a connection to the "
                          "check port: set extproc.tls with client_ca_file (mutual TLS on the "
                          "check and access-log ports), or extproc.allow_unauthenticated_keys: "
                          "true to accept that")
    runtime = PickerRuntime(config, Host.SERVE, config_path, overrides, group)
    if group is not None:
        authz_port += group.index
    checker = Checker(runtime.routing, config.max_body_bytes,
                      "" if group is None else process_prefix(group.index))
    host, port = config.extproc.host, config.extproc.port
    check_free(host, port, "access-log gRPC")
    sock = listen_socket(host, authz_port, "authz HTTP")
    grpc_server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    AccessLogService(checker).add_to(grpc_server)
    if tls is None:
        grpc_server.add_insecure_port(f"{host}:{port}")
    else:
        grpc_server.add_secure_port(f"{host}:{port}", grpc_credentials(tls, host))
    stop = asyncio.Event()
    stop_on_signals(stop, lambda: runtime.leases.active)
    if not await runtime.start_unless(stop):
        sock.close()
        return
    http_server = None
    sweeper = asyncio.create_task(_sweep(checker))
    try:
        await grpc_server.start()
        http_server = await serve_http(checker, runtime.routing.awaits, sock,
                                       ssl=None if tls is None else ssl_context(tls))
        log.info("llm-picker serving (authz mode%s): checks on %s:%d, access log on %s:%d "
                 "(%s), policy %s, %d workers, event loop %s",
                 "" if group is None else f", process {group.index} of {group.count}",
                 host, sock.getsockname()[1], host, port, _security(tls),
                 config.policy.name,
                 len(runtime.routing.workers()),
                 type(asyncio.get_running_loop()).__module__.partition(".")[0])
        await stop.wait()
    finally:
        log.info(_lag_summary(checker))
        sweeper.cancel()
        if http_server is not None:
            http_server.close()
        # Requests in flight get the grace period; their access-log entries still arrive.
        await runtime.stop(config.limits.shutdown_grace_secs,
                           config.limits.shutdown_delay_secs)
        await grpc_server.stop(1.0)
