"""Waiting, in async tests, for something the code under test does on its own time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

__all__ = ["eventually"]


async def eventually(check: Callable[[], object], timeout: float = 5.0,
                     what: str = "condition") -> None:
    """Poll `check` every 10 ms until it is true; AssertionError naming `what` after
    `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)
