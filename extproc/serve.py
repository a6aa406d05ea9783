"""`llm-picker serve`: the ext_proc gRPC server and the admin API on one asyncio loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import uvicorn

from extproc.server import create_server
from picker.access_log import AccessLog
from picker.admin import admin_tls, create_admin_app
from picker.config import PickerConfig
from picker.fleet import WorkerManager
from picker.health import HealthChecker
from picker.listen import listen_socket
from picker.load import LoadMonitor
from picker.reload import ConfigReloader
from picker.router import Router, build_router

__all__ = ["serve"]

log = logging.getLogger("llm_picker")

# How long in-flight ext_proc streams may take to finish after SIGTERM.
_GRACE_SECS = 10.0


class _AdminServer(uvicorn.Server):
    """uvicorn without its own signal handling: `serve` owns SIGTERM for both servers."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve(
    config: PickerConfig,
    config_path: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> None:
    """Run until SIGTERM/SIGINT; with `config_path`, follow the file (SIGHUP or change)."""
    router = build_router(config)
    manager = WorkerManager(router.workers, config.discovery)
    grpc_server, grpc_port = create_server(
        router, config.extproc.host, config.extproc.port, config.max_body_bytes,
        config.extproc.tls, AccessLog() if config.log.access else None,
    )
    # admin.enabled: None (the default) means on for `serve`; only an explicit false
    # turns it off (then nothing answers /ready: the operator chose that). Bound here, before
    # anything starts, so a busy port is a one-line error rather than a traceback later.
    admin_enabled = config.admin.enabled is not False
    admin_socket = (listen_socket(config.admin.host, config.admin.port, "the admin API")
                    if admin_enabled else None)
    admin = _AdminServer(
        uvicorn.Config(
            create_admin_app(router, manager, config.admin.token),
            host=config.admin.host, port=config.admin.port,
            log_level="warning", access_log=False, lifespan="off",
            **admin_tls(config.admin.tls),
        )
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    async with contextlib.AsyncExitStack() as running:
        health = HealthChecker(router.workers, config.health)
        await health.start()
        running.push_async_callback(health.stop)
        await manager.start()
        running.push_async_callback(manager.stop)
        load = LoadMonitor(router.workers, config.load)
        await load.start()
        running.push_async_callback(load.stop)
        if config.prefix.enabled and config.prefix.index == "kv_events":
            from picker.prefix.kv_events import start_kv_events
            running.push_async_callback(await start_kv_events(router, config.prefix.kv_events))
        if config_path is not None:
            reloader = ConfigReloader(config_path, overrides or {}, config, manager,
                                      router.metrics)
            await reloader.start()
            running.push_async_callback(reloader.stop)
        await grpc_server.start()
        admin_task = asyncio.create_task(
            admin.serve([admin_socket]) if admin_socket is not None else stop.wait())
        log.info(
            "llm-picker serving: ext_proc on %s:%d, admin on %s:%d, policy %s, %d workers",
            config.extproc.host, grpc_port, config.admin.host, config.admin.port,
            config.policy.name, len(config.workers),
        )
        expiry = asyncio.create_task(_expire_forever(router))
        running.callback(expiry.cancel)
        stop_task = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait({admin_task, stop_task},
                                     return_when=asyncio.FIRST_COMPLETED)
        # Graceful shutdown: /ready turns 503 at once; requests in flight get the grace
        # period to finish (their streams end normally); then everything stops.
        router.draining = True
        deadline = loop.time() + _GRACE_SECS
        while router.active_requests and loop.time() < deadline:
            await asyncio.sleep(0.05)
        admin.should_exit = True
        await grpc_server.stop(1.0)
        await admin_task
        stop_task.cancel()
    if admin_task in done and not admin.started:
        raise OSError(f"admin API could not listen on {config.admin.host}:{config.admin.port}")


async def _expire_forever(router: Router) -> None:
    """Release slots of requests whose end never arrived (limits.timeout_secs)."""
    while True:
        await asyncio.sleep(1.0)
        expired = router.expire()
        if expired:
            log.warning("released %d requests older than %.0fs", expired,
                        router.limits.timeout_secs)
