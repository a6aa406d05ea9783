"""Waiting for something the code under test does on its own time: a condition (async tests),
a process's end."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["eventually", "process_running", "wait_until"]


async def eventually(check: Callable[[], object], timeout: float = 5.0,
                     what: str = "condition") -> None:
    """Poll `check` every 10 ms until it is true; AssertionError naming `what` after
    `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)


def wait_until(predicate: Callable[[], object], timeout: float = 5.0,
               what: str = "condition") -> None:
    """`eventually` for synchronous tests: poll every 50 ms."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def process_running(pid: int) -> bool:
    """Running, not a zombie: an orphan is reaped by whoever adopts it, if at all."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
