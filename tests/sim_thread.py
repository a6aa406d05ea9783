"""Run a simulated engine in a background thread of the test process (real HTTP, loopback)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

import uvicorn

from picker_bench.stack import free_port
from picker_sim import SimConfig, create_app


class _ThreadServer(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # signals belong to the main thread
        pass


@contextlib.contextmanager
def running_sim(**settings: object) -> Iterator[str]:
    """Yields the sim's base url; defaults: model "m", worker_id "w1", fast latency."""
    config = SimConfig(**{"model": "m", "worker_id": "w1", "ttft_ms": 5, "tpot_ms": 1,  # type: ignore[arg-type]
                          **settings})
    port = free_port()
    server = _ThreadServer(uvicorn.Config(create_app(config), host="127.0.0.1", port=port,
                                          log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(5)
