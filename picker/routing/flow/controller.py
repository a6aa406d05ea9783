"""The flow controller: every request either dispatches or is refused, once, with a reason.

    request ─ quota ─(429 quota_exceeded, Retry-After when the budget holds it)
                │
                ├─ room and nobody waiting ahead ─────────────────────────► dispatched
                └─ wait in band/flow queue ─ pump ───────────────────────► dispatched
                       ├─ queue full, nothing lower to shed (503 queue_full)
                       ├─ shed for a higher band               (503 shed)
                       ├─ TTL over                              (503 ttl_expired)
                       ├─ no routable worker until its TTL      (503 no_ready_worker)
                       └─ client gone                           (cancelled: nobody to answer)

`pump` dispatches while there is room: bands in strict priority order, the band's fairness
policy choosing between flows, each flow's queue in its order - the two tiers of policy
llm-d-router's controller applies (pkg/epp/flowcontrol/README.md:146-157). It runs when a
request arrives, when a dispatched one ends, and on `tick()` (engine signals and worker
readiness change on their own). When the
queues are full a newcomer may displace the newest waiter of a lower band, as llm-d's
displacement does (README.md:16-20); otherwise the newcomer is refused.

Unlike llm-d, which answers a TTL expiry with 429 while endpoints exist
(pkg/epp/requestcontrol/admission.go:243-268), every refusal but a quota's is a 503 here: 429
is kept for "you, this flow, sent too much"; 503 says "the fleet is full now".

A dispatched request holds a `Ticket` (picker.routing.flow.ticket), which tells the controller
when a worker took the request and when it ended. One lock guards the queues and counts;
waiters' futures are resolved on their own loops.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from picker.errors import FlowRefused, QuotaExceeded
from picker.routing.flow.fairness import fairness_policy
from picker.routing.flow.headroom import Headroom
from picker.routing.flow.key import FlowAsk, FlowKey, listing_order
from picker.routing.flow.queues import Band, Waiter
from picker.routing.flow.quota import QuotaBook
from picker.routing.flow.quota_table import QuotaTable
from picker.routing.flow.saturation import Room, SaturationDetector
from picker.routing.flow.settings import FlowSettings
from picker.routing.flow.ticket import Ticket

__all__ = ["FlowController", "FlowObserver", "FlowOutcome", "FlowRow", "FlowStats"]


class FlowOutcome(enum.StrEnum):
    """How a request left flow control; the reason code of a refusal."""

    DISPATCHED = "dispatched"
    QUOTA_EXCEEDED = "quota_exceeded"
    QUEUE_FULL = "queue_full"
    SHED = "shed"
    TTL_EXPIRED = "ttl_expired"
    NO_READY_WORKER = "no_ready_worker"
    CANCELLED = "cancelled"
    PREEMPTED = "preempted"  # dispatched, then ended to free its slot for a higher band


_MESSAGES: Mapping[FlowOutcome, str] = {
    FlowOutcome.QUEUE_FULL: "the picker's queue for this priority is full",
    FlowOutcome.SHED: "shed from the queue to make room for higher-priority requests",
    FlowOutcome.TTL_EXPIRED: "waited in the queue for its whole time-to-live",
    FlowOutcome.NO_READY_WORKER: "no ready worker serves this model (waited for one to start)",
    FlowOutcome.PREEMPTED: "ended to make room for a higher-priority request",
}


class FlowObserver:
    """What flow control reports as it decides (metrics); no-ops here. Called under the
    controller's lock: quick, and never calling back."""

    def queued(self, key: FlowKey, change: int) -> None:
        """The flow's queue grew (+1) or shrank (-1)."""

    def left(self, key: FlowKey, outcome: FlowOutcome, waited_secs: float) -> None:
        """A request left flow control: dispatched or refused, after `waited_secs`; or a
        dispatched one was preempted (PREEMPTED, waited 0)."""

    def quota_table_full(self) -> None:
        """A flow with a budget found no slot in the quota table: refused, or its generated
        tokens not charged."""


@dataclass(frozen=True, slots=True)
class FlowRow:
    """One flow of one band: how many wait, since when, and how requests left it so far."""

    key: FlowKey
    queued: int
    oldest_wait_secs: float  # 0 when nobody waits
    left: Mapping[FlowOutcome, int]


@dataclass(frozen=True, slots=True)
class FlowStats:
    """Every flow seen (highest band first, then by flow id), and dispatched requests not yet
    ended."""

    flows: tuple[FlowRow, ...]
    active: int


class FlowController:
    def __init__(self, settings: FlowSettings, detector: SaturationDetector,
                 max_active: int = 0, observer: FlowObserver | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 quota_table: QuotaTable | None = None) -> None:
        """`quota_table`: where budgets are spent, shared by a group's processes; private
        when None."""
        self._settings = settings
        self._detector = detector
        self._max_active = max_active
        self._observer = observer or FlowObserver()
        self._clock = clock
        self._quotas = QuotaBook(settings, quota_table, clock,
                                 self._observer.quota_table_full)
        self._lock = threading.Lock()
        self._bands: dict[int, Band] = {}
        self._queued = 0
        self._active = 0
        self._pending: dict[str, int] = {}  # dispatched, no lease opened yet, per model
        # The higher (non-sheddable) bands' demand, which sheddable dispatches leave room for.
        self._headroom = Headroom(settings.saturation.headroom_miss_rate, clock)
        # How requests left each flow, for the status page (the metrics count the same; their
        # flows are as many as the metrics' label values). Its own lock: some refusals are
        # counted outside the controller's.
        self._left: dict[FlowKey, dict[FlowOutcome, int]] = {}
        self._left_lock = threading.Lock()
        # Running sheddable requests their adapter can end (flow.preempt), oldest first; and
        # per model, the requests ended for waiters not dispatched yet. A slot freed by one
        # may not show as room at once (engine signals change at the next scrape; another
        # process may take it): until its waiter is dispatched or gone, it is the waiter's.
        self._preemptible: dict[Ticket, Callable[[FlowRefused], None]] = {}
        self._promised: dict[str, int] = {}

    # -- entry points --------------------------------------------------------------------

    async def admit(self, ask: FlowAsk) -> Ticket:
        """Dispatch now, or wait until dispatched; raises QuotaExceeded or FlowRefused."""
        arrived = self._clock()
        try:
            self._quotas.take(ask.key.fairness_id, ask.tokens)
        except QuotaExceeded:
            self._count_left(ask.key, FlowOutcome.QUOTA_EXCEEDED, 0.0)
            raise
        loop = asyncio.get_running_loop()
        with self._lock:
            if not self._queued:
                ticket = self._try_now(ask)
                if ticket is not None:
                    return ticket
            waiter = self._enqueue(ask, arrived, loop)
            self._pump()
        return await self._wait(waiter)

    def tick(self) -> None:
        """Re-check room: engine signals and worker readiness change without telling us."""
        with self._lock:
            if self._queued:
                self._pump()

    def stats(self) -> FlowStats:
        now = self._clock()
        with self._lock:
            waiting = {FlowKey(band.priority, flow): (count, band.oldest(flow))
                       for band in self._bands.values()
                       for flow, count in band.flow_sizes().items()}
            active = self._active
        with self._left_lock:
            left = {key: dict(counts) for key, counts in self._left.items()}
        rows = []
        for key in sorted(waiting.keys() | left.keys(), key=listing_order):
            count, arrived = waiting.get(key, (0, now))
            rows.append(FlowRow(key, count, now - arrived, left.get(key, {})))
        return FlowStats(tuple(rows), active)

    # -- dispatch --------------------------------------------------------------------------

    def _try_now(self, ask: FlowAsk) -> Ticket | None:
        room = self._room(ask.model, ask.key.sheddable)
        return self._dispatch(ask, 0.0) if self._passes(room) else None

    def _passes(self, room: Room) -> bool:
        """Dispatch on this room: free, or nothing to wait for (the router then refuses as it
        would without flow control: 404 for a model nobody serves, 503 with no ready worker
        when scale-from-zero holding is off)."""
        return room is Room.FREE or room is Room.UNSERVED or (
            room is Room.NO_WORKER and not self._settings.no_worker_ttl_secs)

    def _room(self, model: str, sheddable: bool = False) -> Room:
        if self._max_active and self._active >= self._max_active:
            return Room.SATURATED
        keep_free = functools.partial(self._headroom.slots, model) if sheddable else None
        return self._detector.room(model, self._pending.get(model, 0), keep_free)

    def _dispatch(self, ask: FlowAsk, waited: float, first: bool = True) -> Ticket:
        self._active += 1
        self._pending[ask.model] = self._pending.get(ask.model, 0) + 1
        if not ask.key.sheddable:
            self._headroom.change(ask.model, 1)
            promised = self._promised.get(ask.model)
            if promised:  # the slot a preempted request freed for it, if it was one
                self._promised[ask.model] = promised - 1
        self._band(ask.key.priority).fairness.dispatched(ask.key.fairness_id, ask.tokens)
        if first:
            self._count_left(ask.key, FlowOutcome.DISPATCHED, waited)
        return Ticket(self, ask, waited)

    def _pump(self) -> None:
        now = self._clock()
        rooms: dict[tuple[str, bool], Room] = {}
        progress = True
        while progress and self._queued:
            progress = False
            for priority in sorted(self._bands, reverse=True):
                band = self._bands[priority]
                for flow in band.fairness.order(band.backlogged()):
                    waiter = band.head(flow)
                    if waiter is None:
                        continue
                    where = (waiter.ask.model, waiter.ask.key.sheddable)
                    room = rooms.get(where)
                    if room is None:
                        room = rooms[where] = self._room(*where)
                    if not self._passes(room):
                        continue
                    self._take_out(waiter)
                    ticket = self._dispatch(waiter.ask, now - waiter.arrived)
                    waiter.loop.call_soon_threadsafe(_resolve, waiter.future, ticket)
                    rooms.clear()  # that dispatch used room
                    progress = True
                    break
                if progress:
                    break
        if self._preemptible and self._queued:
            self._preempt()

    def _preempt(self) -> None:
        """For each non-sheddable waiter whose model has no free slot, and no request ended
        for it already, end one running sheddable request of that model: the lowest band
        first; in it, of the flow holding the most running requests (preemption must not undo
        the fairness between flows that dispatch kept), and of those the most recently
        dispatched (the least work lost). Their slots free when their leases end, and
        `ticket_finished` pumps again."""
        blocked: dict[str, int] = {}
        for priority, band in self._bands.items():
            if priority >= 0 and band.size:
                for model, count in band.waiting_per_model().items():
                    blocked[model] = blocked.get(model, 0) + count
        # A promise outlives no waiter: those gone (expired, cancelled) release theirs.
        self._promised = {model: min(count, blocked[model])
                          for model, count in self._promised.items() if blocked.get(model)}
        for model, count in blocked.items():
            need = count - self._promised.get(model, 0)
            if need <= 0 or self._room(model) is not Room.SATURATED:
                continue
            running = [t for t in self._preemptible if t.ask.model == model]
            for _ in range(min(need, len(running))):
                held = Counter(t.ask.key for t in running)
                victim = running[min(range(len(running)), key=lambda i: (
                    running[i].ask.key.priority, -held[running[i].ask.key], -i))]
                running.remove(victim)
                end = self._preemptible.pop(victim)
                self._promised[model] = self._promised.get(model, 0) + 1
                self._count_left(victim.ask.key, FlowOutcome.PREEMPTED, 0.0)
                end(self._refusal(FlowOutcome.PREEMPTED))

    # -- waiting ---------------------------------------------------------------------------

    def _enqueue(self, ask: FlowAsk, arrived: float,
                 loop: asyncio.AbstractEventLoop) -> Waiter:
        settings = self._settings
        priority = ask.key.priority
        band = self._band(priority)
        band_bound = settings.band_max_queued.get(priority)
        if band_bound is not None and band.size >= band_bound:
            self._refuse_locked(ask, FlowOutcome.QUEUE_FULL)
        if self._queued >= settings.max_queued and not self._shed_below(priority):
            self._refuse_locked(ask, FlowOutcome.QUEUE_FULL)
        deadline = arrived + (ask.slo_ttft_secs if ask.slo_ttft_secs is not None
                              else settings.ttl_secs)
        budget = settings.no_worker_ttl_secs if self._room(ask.model) is Room.NO_WORKER \
            else settings.ttl_secs
        waiter = Waiter(ask, arrived, deadline, arrived + budget, loop, loop.create_future())
        band.push(waiter)
        self._queued += 1
        self._observer.queued(ask.key, 1)
        return waiter

    def _band(self, priority: int) -> Band:
        band = self._bands.get(priority)
        if band is None:
            band = self._bands[priority] = Band(priority, self._settings.ordering,
                                                fairness_policy(self._settings.fairness))
        return band

    def _shed_below(self, priority: int) -> bool:
        """Make room for a request of `priority` by shedding the newest waiter of the lowest
        band below it; False when there is none."""
        for lower in sorted(self._bands):
            if lower >= priority:
                return False
            victim = self._bands[lower].newest()
            if victim is not None:
                self._take_out(victim)
                self._resolve_refused(victim, FlowOutcome.SHED)
                return True
        return False

    def _take_out(self, waiter: Waiter) -> None:
        band = self._bands[waiter.ask.key.priority]
        band.remove(waiter)
        self._queued -= 1
        self._observer.queued(waiter.ask.key, -1)

    async def _wait(self, waiter: Waiter) -> Ticket:
        try:
            # asyncio.timeout, not wait_for: on 3.11 wait_for swallows a cancellation arriving
            # as the future completes (CPython bpo-42130), and a client gone would keep a slot.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, waiter.expires - self._clock())):
                    return await asyncio.shield(waiter.future)
            with self._lock:
                queued = waiter.queued
                if queued:
                    self._take_out(waiter)
                    no_worker = self._room(waiter.ask.model) is Room.NO_WORKER
            if not queued:  # dispatched or refused as the timer fired: the future says which
                return await waiter.future
            outcome = FlowOutcome.NO_READY_WORKER if no_worker else FlowOutcome.TTL_EXPIRED
            self._refuse(waiter.ask, outcome, self._clock() - waiter.arrived)
            raise self._refusal(outcome)
        except asyncio.CancelledError:
            # The client went away: leave the queue, or give back the dispatch it was handed
            # as it left - never keep a place nobody will release.
            with self._lock:
                queued = waiter.queued
                if queued:
                    self._take_out(waiter)
            if queued:
                self._refuse(waiter.ask, FlowOutcome.CANCELLED, self._clock() - waiter.arrived)
            elif not waiter.future.done():
                waiter.future.cancel()  # _resolve, still to run, then gives the ticket back
            elif not waiter.future.cancelled() and waiter.future.exception() is None:
                waiter.future.result().cancel()
            raise

    def _unpend(self, model: str) -> None:
        """One fewer dispatched request of `model` without a lease; a model at none is
        forgotten (model names are client text: the dict must not grow with them)."""
        left = self._pending[model] - 1
        if left:
            self._pending[model] = left
        else:
            del self._pending[model]

    def ticket_again(self, ticket: Ticket) -> Ticket:
        with self._lock:
            return self._dispatch(ticket.ask, ticket.waited_secs, first=False)

    def ticket_preemptible(self, ticket: Ticket, end: Callable[[FlowRefused], None]) -> bool:
        if not self._settings.preempt or not ticket.ask.key.sheddable:
            return False
        with self._lock:
            if ticket.state == "done":
                return False
            # Newest last: dicts keep insertion order, and `_preempt` sorts stably by band.
            self._preemptible[ticket] = end
            if self._queued:
                self._preempt()
        return True

    # -- ends ------------------------------------------------------------------------------

    def ticket_opened(self, ticket: Ticket) -> None:
        with self._lock:
            if ticket.state != "pending":
                return
            ticket.state = "open"
            self._unpend(ticket.ask.model)

    def ticket_finished(self, ticket: Ticket, generated: float, refund: bool) -> None:
        ask = ticket.ask
        with self._lock:
            if ticket.state == "done":
                return
            if ticket.state == "pending":
                self._unpend(ask.model)
            ticket.state = "done"
            self._preemptible.pop(ticket, None)
            self._active -= 1
            if not ask.key.sheddable:
                self._headroom.change(ask.model, -1)
            band = self._bands.get(ask.key.priority)
            if band is not None and generated:
                band.fairness.generated(ask.key.fairness_id, generated)
            if self._queued:
                self._pump()
        if refund:
            self._quotas.give_back(ask.key.fairness_id, ask.tokens)
        elif generated:
            self._quotas.generated(ask.key.fairness_id, generated)

    # -- refusals --------------------------------------------------------------------------

    def _count_left(self, key: FlowKey, outcome: FlowOutcome, waited: float) -> None:
        with self._left_lock:
            counts = self._left.setdefault(key, {})
            counts[outcome] = counts.get(outcome, 0) + 1
        self._observer.left(key, outcome, waited)

    def _refuse_locked(self, ask: FlowAsk, outcome: FlowOutcome) -> None:
        """Refuse a newcomer while holding the lock (it never queued)."""
        self._quotas.give_back(ask.key.fairness_id, ask.tokens)
        self._count_left(ask.key, outcome, 0.0)
        raise self._refusal(outcome)

    def _refuse(self, ask: FlowAsk, outcome: FlowOutcome, waited: float) -> None:
        self._quotas.give_back(ask.key.fairness_id, ask.tokens)
        self._count_left(ask.key, outcome, waited)

    def _resolve_refused(self, waiter: Waiter, outcome: FlowOutcome) -> None:
        self._refuse(waiter.ask, outcome, self._clock() - waiter.arrived)
        waiter.loop.call_soon_threadsafe(_fail, waiter.future, self._refusal(outcome))

    def _refusal(self, outcome: FlowOutcome) -> FlowRefused:
        retry = self._settings.retry_after_secs
        if outcome is FlowOutcome.NO_READY_WORKER:
            retry = max(retry, math.ceil(self._settings.no_worker_ttl_secs))
        return FlowRefused(f"{_MESSAGES[outcome]}; retry later", outcome.value, retry)


def _resolve(future: asyncio.Future[Ticket], ticket: Ticket) -> None:
    if future.done():  # the waiter was cancelled as it was dispatched: give the place back
        ticket.cancel()
    else:
        future.set_result(ticket)


def _fail(future: asyncio.Future[Ticket], error: FlowRefused) -> None:
    if not future.done():
        future.set_exception(error)
