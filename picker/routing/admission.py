"""Admission: the picker's global concurrency limit, with an optional bounded waiting queue.

The TGI router pattern: beyond `max_concurrent_requests` in flight, a request waits in a queue of
`queue_size` for up to `queue_timeout_secs`, else it is refused at once with 429 and
Retry-After, so an overloaded fleet sheds load at the edge instead of queueing unboundedly in
the engines. Slots are taken at the pick and given back when the request's Lease is released.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque

from pydantic import Field

from picker.errors import Overloaded
from picker.strict import StrictModel

__all__ = ["Admission", "LimitSettings"]


class LimitSettings(StrictModel):

    max_concurrent_requests: int = Field(default=0, ge=0, description="0: unlimited")
    per_worker_max: int = Field(default=0, ge=0, description="0: unlimited")
    queue_size: int = Field(default=0, ge=0, description="0: refuse at once when full")
    queue_timeout_secs: float = Field(default=5.0, gt=0)
    retry_after_secs: int = Field(default=1, ge=0)
    # A request whose end the picker never hears of is released after this long.
    timeout_secs: float = Field(default=3600.0, gt=0)
    # On SIGTERM, how long requests in flight may take to finish (a long generation streams
    # for minutes; deploy/'s terminationGracePeriodSeconds leaves 10 s more).
    shutdown_grace_secs: float = Field(default=120.0, ge=0)
    # On SIGTERM, readiness turns false at once, and new requests are still routed for this
    # long, while load balancers and gateways notice (their health checks, Kubernetes
    # removing the pod's endpoint), and then while they keep arriving (up to this long
    # again); then the drain. 0: drain at once.
    shutdown_delay_secs: float = Field(default=0.0, ge=0, le=600)


class Admission:
    """Thread-safe counter of admitted requests; waiters are futures on their own loops."""

    def __init__(self, settings: LimitSettings) -> None:
        self._settings = settings
        self._lock = threading.Lock()
        self.active = 0
        self._waiters: deque[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = deque()

    @property
    def limit(self) -> int:
        return self._settings.max_concurrent_requests

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def try_enter(self) -> None:
        """Take a slot now or raise Overloaded (the synchronous path: no queue)."""
        with self._lock:
            if self.limit and self.active >= self.limit:
                raise self._overloaded()
            self.active += 1

    async def enter(self) -> None:
        """Take a slot, waiting in the bounded queue if configured."""
        loop = asyncio.get_running_loop()
        with self._lock:
            if not self.limit or self.active < self.limit:
                self.active += 1
                return
            if len(self._waiters) >= self._settings.queue_size:
                raise self._overloaded()
            future: asyncio.Future[None] = loop.create_future()
            self._waiters.append((loop, future))
        try:
            # The slot is handed over by leave(): `active` already counts us when we wake.
            await asyncio.wait_for(asyncio.shield(future), self._settings.queue_timeout_secs)
        except TimeoutError:
            with self._lock:
                if (loop, future) in self._waiters:
                    self._waiters.remove((loop, future))
                    raise self._overloaded("queue wait timed out") from None
            # leave() handed us the slot just as we timed out: keep it.
        except asyncio.CancelledError:
            # The client went away while queued: leave the queue, or give back the slot
            # leave() may already have handed over - never keep a slot nobody will release.
            with self._lock:
                queued = (loop, future) in self._waiters
                if queued:
                    self._waiters.remove((loop, future))
            if not queued:
                self.leave()
            raise

    def leave(self) -> None:
        with self._lock:
            if self._waiters:
                loop, future = self._waiters.popleft()
                loop.call_soon_threadsafe(_resolve, future)  # the slot passes straight on
                return
            self.active -= 1

    def _overloaded(self, why: str = "") -> Overloaded:
        detail = f" ({why})" if why else ""
        return Overloaded(f"the picker is at its limit of {self.limit} concurrent "
                          f"requests{detail}; retry later",
                          retry_after=self._settings.retry_after_secs)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
