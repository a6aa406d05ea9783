"""Serving the admin API: bound before anything says "serving", stopped with the runtime.

uvicorn on the runtime's loop, with a deadline for reading each request head
(picker.admin.head_deadline) and without uvicorn's own signal handling: the host owns SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import Iterator
from typing import Any

import uvicorn
from fastapi import FastAPI

from picker.admin.head_deadline import head_deadline_protocol
from picker.config import AdminConfig
from picker.listen import TlsConfig, listen_socket

__all__ = ["serve_admin"]

# How long serve_admin waits for the admin API to listen before calling it a failure.
_START_SECS = 10.0


async def serve_admin(app: FastAPI, admin: AdminConfig,
                      running: contextlib.AsyncExitStack) -> int:
    """Serve `app` as `admin` says until `running` closes; returns the bound port. Raises
    OSError if it cannot listen (a busy port is one line naming it, never a traceback)."""
    sock = listen_socket(admin.host, admin.port, "the admin API")
    # ws="none": the API has no websockets, and uvicorn's "auto" imports the websockets
    # package (~0.1 s of CPU at every start).
    server = _AdminServer(uvicorn.Config(
        app, host=admin.host, port=admin.port, log_level="warning", access_log=False,
        lifespan="off", ws="none", http=head_deadline_protocol(admin.header_timeout_secs),
        timeout_keep_alive=admin.keep_alive_timeout_secs, **_tls(admin.tls)))
    task = asyncio.create_task(server.serve([sock]))
    deadline = time.monotonic() + _START_SECS
    while not server.started and not task.done() and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    if not server.started:
        server.should_exit = True
        await _cancel(task)
        sock.close()
        raise OSError(f"the admin API did not start on {admin.host}:{admin.port}")

    async def stop() -> None:
        server.should_exit = True
        await asyncio.wait({task}, timeout=5)
        await _cancel(task)
        sock.close()

    running.push_async_callback(stop)
    port: int = sock.getsockname()[1]
    return port


def _tls(tls: TlsConfig | None) -> dict[str, Any]:
    """uvicorn's TLS settings for the admin API (client certificates required with a CA)."""
    if tls is None:
        return {}
    settings: dict[str, Any] = {"ssl_certfile": str(tls.cert_file),
                                "ssl_keyfile": str(tls.key_file)}
    if tls.client_ca_file is not None:
        settings.update(ssl_ca_certs=str(tls.client_ca_file), ssl_cert_reqs=ssl.CERT_REQUIRED)
    return settings


async def _cancel(task: asyncio.Task[Any]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


class _AdminServer(uvicorn.Server):
    """uvicorn without its own signal handling: the host owns SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield
