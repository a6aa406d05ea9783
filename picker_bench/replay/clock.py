"""Virtual time for a replay: an asyncio loop whose clock jumps to the next timer.

Why: the simulated engines (picker_sim.engine) model latency with sleeps (`asyncio.sleep`, or
this loop's leaner `sleep` when a replay hands it to them), so the same engine code that
serves HTTP in tests can be driven in process by a replay. On this loop a
sleep costs no wall time: when nothing is ready to run, `select` is asked to wait for the
next timer and, instead of waiting, the clock moves forward by that much. A replay is then as
fast as the Python it runs, and deterministic: one thread, timers in (deadline, insertion)
order, no real I/O.

asyncio's loop computes the select timeout from its own `time()` and its earliest timer
(CPython Lib/asyncio/base_events.py, `BaseEventLoop._run_once`), and `SelectorEventLoop`
accepts the selector it uses as an argument, so both seams used here are public.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Awaitable

__all__ = ["StalledReplay", "VirtualTimeLoop"]


class StalledReplay(RuntimeError):
    """Nothing is ready and no timer is pending, yet the replay has not ended: a request is
    waiting for something that cannot happen in a simulation (a deadlock in the model)."""


class _SkippingSelector(selectors.DefaultSelector):
    """Advances the virtual clock by the timeout instead of waiting."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is None:
            raise StalledReplay("the replay has nothing to run and no timer to wait for")
        # A replay has no I/O: only the loop's own wake-up pipe is registered, which another
        # thread writes to wake a loop blocked in select - and this one never blocks (the
        # callback such a thread schedules is run on the next turn all the same). So no
        # system call: ~24 per replayed request, 2% of a replay.
        self.now += timeout
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """`loop.time()` is virtual seconds since the loop was made."""

    def __init__(self) -> None:
        self._skipping = _SkippingSelector()
        super().__init__(self._skipping)

    def time(self) -> float:
        return self._skipping.now

    def sleep(self, delay: float) -> Awaitable[None]:
        """asyncio.sleep(delay) on this loop, without its coroutine: a future its timer
        completes (the same timer at the same time, then the same wake-up of the waiting
        task, so the same order of events). A replay sleeps ~23 times per request (a
        prefill, decode runs of 16 tokens): the coroutine was a tenth of it."""
        if delay <= 0:
            return asyncio.sleep(0)  # asyncio yields once, with no timer
        future = self.create_future()
        self.call_at(self.time() + delay, _wake, future)
        return future


def _wake(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.set_result(None)
