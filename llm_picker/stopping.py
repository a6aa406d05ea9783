"""SIGTERM and SIGINT for `llm-picker serve`: the first stops it gracefully, a second at once.

The first sets `stop`: /ready turns 503, routing goes on for limits.shutdown_delay_secs, then
requests in flight get limits.shutdown_grace_secs to end (picker.runtime). An operator who
sends a second signal (Ctrl-C twice, `kill` again) wants out now, as most servers take it:
the process exits with status 1, logging how many requests it cuts.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable

__all__ = ["stop_on_signals"]

log = logging.getLogger("llm_picker")


def stop_on_signals(stop: asyncio.Event, in_flight: Callable[[], int]) -> None:
    """On the running loop: the first SIGTERM or SIGINT sets `stop`, a second exits now."""

    def signalled() -> None:
        if not stop.is_set():
            stop.set()
            return
        log.warning("a second stop signal: exiting now, cutting %d requests in flight",
                    in_flight())
        logging.shutdown()
        os._exit(1)

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, signalled)
