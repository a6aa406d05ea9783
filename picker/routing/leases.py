"""The lease book: every in-flight request's slot, from admission to its one release.

One lock guards the open leases and the outcome counts; admission (the global concurrency
limit and its waiting queue) is taken just before a lease opens (`admit` / `admit_now`, by the
runtime) and given back when it closes - or with `cancel_admission` when no worker fits - so
"one admission slot per lease" holds whatever the adapter does. Adapters learn that a request
ended from several places (stream end, reset, error, timeout) and may report it more than once:
only the first report counts, so load returns to exactly zero whatever the order of events.

A lease may move once it is open: when the proxy reports that another worker served the
request (Envoy retried down the picker's fallback list), the in-flight slot follows it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

from picker.errors import FlowRefused
from picker.fleet.registry import Worker, WorkerRegistry
from picker.fleet.speed import Observation
from picker.observe.metrics import PickerMetrics
from picker.policies.scorers import DEFAULT_STALE_SECS
from picker.routing.admission import Admission, LimitSettings
from picker.routing.control_headers import HOP
from picker.routing.destination import Forward, Headers, destination, reach_headers
from picker.routing.outcome import Outcome
from picker.routing.predicted import Predicted
from picker.routing.request import RoutingRequest
from picker.routing.response_stats import ResponseSample
from picker.routing.router import Choice

if TYPE_CHECKING:
    from picker.grpc_route.transcoder import GrpcTranscoder

__all__ = ["Lease", "LeaseBook", "LeaseEnd", "LeaseWatcher"]

log = logging.getLogger("llm_picker.leases")

# What each request outcome tells the worker's circuit breaker; cancellations say nothing.
_CIRCUIT_OUTCOMES = {Outcome.COMPLETED: True, Outcome.UPSTREAM_ERROR: False}

# What a watcher wants done when the lease it was shown closes: (lease, outcome, response).
LeaseEnd = Callable[["Lease", Outcome, ResponseSample | None], None]


class LeaseWatcher(Protocol):
    """Learns what was decided for a request and, at its end, what came of it (trace recording
    and the prediction audit, picker.trace): the two points where a request's outcome meets its
    decision. `opened` runs before the lease counts on the worker, so what the watcher reads of
    the worker's load is what the decision saw, and `predicted` (taken then, once for every
    watcher) is what the picker expected of it; it returns what to call at the end (None: this
    request does not interest it). A watcher that `needs_answer` is shown only requests whose
    answer the adapter will see (RoutingRequest.answer_seen): it would learn nothing from the
    others, and their prediction is then not taken at all."""

    needs_answer: bool

    def opened(self, choice: Choice, request: RoutingRequest,
               predicted: Predicted) -> LeaseEnd | None: ...


class Lease:
    """One request's in-flight slot on a worker; `release` it once the request is over.

    A prefill/decode pair is one lease: `worker` is where the proxy sends the request (decode),
    `prefill` the worker that prefilled it, whose slot is held and released with it. `forward`
    is what the proxy sends instead of the client's request, when the pair's protocol says.
    `choice` says who chose the worker and why (its record when explain is enabled);
    `fallbacks` where a proxy that retries should go next, chosen by the same router."""

    __slots__ = ("_worker", "choice", "prefill", "fallbacks", "started", "_book", "_open",
                 "_forward", "_ends", "_prefilled", "_trace", "_reported", "_transcoder",
                 "_preempt", "_hop")

    def __init__(self, choice: Choice, book: LeaseBook, prefill: Worker | None = None,
                 fallbacks: Sequence[Worker] = (), ends: Sequence[LeaseEnd] = ()) -> None:
        self._ends = ends
        self._prefilled = False  # its first token passed: its prefill is no longer work ahead
        self._worker = choice.worker
        self.choice = choice
        self.prefill = prefill
        self.fallbacks = tuple(fallbacks)
        self.started = time.monotonic()
        self._book = book
        self._open = True
        self._forward: Forward | None = None
        self._trace: Headers = ()
        self._hop: Headers = ()
        self._reported: ResponseSample | None = None  # the answer as `observe` heard of it
        self._transcoder: GrpcTranscoder | None = None
        # Flow control's ticket's `preemptible`, for a request flow control may end early.
        self._preempt: Callable[[Callable[[FlowRefused], None]], bool] | None = None

    @property
    def forward(self) -> Forward | None:
        return self._forward

    def forward_as(self, forward: Forward) -> None:
        """Set by the runtime once the pair's protocol step is done."""
        self._forward = forward

    @property
    def transcoder(self) -> GrpcTranscoder | None:
        """A gRPC worker's request: what rewrites the engine's answer into OpenAI's (the
        request itself is `forward`, the Generate call); None for an HTTP worker."""
        return self._transcoder

    def transcode_as(self, transcoder: GrpcTranscoder) -> None:
        """Set by the routing service as a lease on a gRPC worker opens."""
        self._transcoder = transcoder
        self._forward = Forward(transcoder.body, transcoder.headers)

    def hop_as(self, hops: str) -> None:
        """Set by the routing service: the pickers the request has passed, this one last
        (picker.routing.hops)."""
        self._hop = ((HOP, hops),)

    def trace_as(self, headers: Headers, end: LeaseEnd) -> None:
        """Set by the routing service as the lease opens (tracing.enabled): the trace
        context headers the worker gets, and what to call when the lease closes."""
        self._trace = headers
        self._ends = (*self._ends, end)

    @property
    def worker(self) -> Worker:
        """The worker holding the slot: the chosen one, or the one that served (`move_to`)."""
        return self._worker

    @property
    def destination(self) -> str:
        """`host:port` of the worker, then of each fallback, comma-separated."""
        return destination(self._worker, self.fallbacks)

    @property
    def headers(self) -> Headers:
        """Every header the proxy sets on the way to the worker: the destination (with the
        fallbacks), rank and key, what a prefill/decode protocol adds, and the trace context."""
        extra = () if self._forward is None else self._forward.headers
        return (*reach_headers(self._worker, self.fallbacks), *extra, *self._trace, *self._hop)

    def release(self, outcome: Outcome, response: ResponseSample | None = None) -> bool:
        """Free the slot once, with what was observed of the response if the adapter saw it;
        returns False if it was already released."""
        return self._book.close(self, outcome, response)

    def preemptible(self, end: Callable[[FlowRefused], None]) -> bool:
        """The adapter can end this request early (ext_proc: an immediate response to Envoy):
        flow control may then call `end` with the error to answer, once, from any thread and
        under its lock (`end` must only schedule the ending), to free the slot for a
        higher-priority request; the adapter releases the lease with Outcome.PREEMPTED. False
        when that never happens (no flow control, flow.preempt off, a request that is not
        sheddable)."""
        return self._preempt is not None and self._preempt(end)

    def preempted_through(self, preemptible: Callable[[Callable[[FlowRefused], None]], bool]
                          ) -> None:
        """Set by the routing service: the flow control ticket's `preemptible`."""
        self._preempt = preemptible

    def first_token(self) -> None:
        """The response's first bytes passed (an adapter that sees the response body): the
        prompt is prefilled, so it stops counting as prefill work ahead on the worker now,
        not when the request ends (issue 35.3)."""
        self._book.first_token(self)

    def observe(self, observation: Observation) -> None:
        """The finished request's timing and usage as the proxy reported them (LiteLLM's
        success callback, before the release): they teach the serving worker's speed, and the
        lease's watchers get them at its end as the answer (its usage, its first token)."""
        self._reported = ResponseSample.reported(observation)
        self._book.observe(self._worker, observation)

    @staticmethod
    def generated_tokens(response: ResponseSample | None) -> int:
        """Tokens the request generated, as far as the adapter saw: the answer's usage, else
        its streamed chunks (one token each); 0 unseen."""
        if response is None:
            return 0
        return response.usage.completion_tokens if response.usage is not None \
            else response.chunks

    def move_to(self, worker: Worker) -> bool:
        """The request was served by `worker`, not the chosen one: move the slot there (the
        chosen worker's circuit breaker hears it failed this request). False if released or
        already there."""
        return self._book.move(self, worker)

    @property
    def open(self) -> bool:
        return self._open


class LeaseBook:
    def __init__(self, workers: WorkerRegistry, limits: LimitSettings,
                 metrics: PickerMetrics, watchers: Sequence[LeaseWatcher] = (),
                 stale_after_secs: float = DEFAULT_STALE_SECS) -> None:
        """`stale_after_secs`: engine signals older than this do not feed the predictions
        the watchers are shown (load.stale_after_secs, as the scorers read them)."""
        self._watchers = tuple(watchers)
        self._blind_watchers = tuple(w for w in self._watchers if not w.needs_answer)
        self._stale = stale_after_secs
        self._workers = workers
        self._limits = limits
        self._metrics = metrics
        self._admission = Admission(limits)
        self._lock = threading.Lock()
        self._open: dict[int, Lease] = {}
        # When the last lease was opened (time.monotonic()): a draining picker keeps routing
        # until its balancer has stopped sending (picker.runtime).
        self.last_opened = 0.0
        self._outcomes: dict[str, int] = {}  # finished requests by outcome (success ratio)
        metrics.watch_admission(self._admission, self._outcomes)

    @property
    def queueing(self) -> bool:
        """True when admission may have to wait (a limit with a waiting queue): then only the
        async path can admit."""
        return self._admission.limit > 0 and self._limits.queue_size > 0

    @property
    def active(self) -> int:
        """Admitted requests not yet released."""
        return self._admission.active

    @property
    def limit(self) -> int | None:
        """The global concurrency limit, None when unlimited."""
        return self._admission.limit or None

    @property
    def outcomes(self) -> Mapping[str, int]:
        return self._outcomes

    def admit_now(self) -> None:
        """Take an admission slot now or raise Overloaded (no waiting)."""
        self._admission.try_enter()

    async def admit(self) -> None:
        """Take an admission slot, waiting in the bounded queue if configured."""
        await self._admission.enter()

    def cancel_admission(self) -> None:
        """Give back a slot taken by `admit` or `admit_now` when no lease was opened on it."""
        self._admission.leave()

    def open(self, choice: Choice, prefill: Worker | None = None,
             fallbacks: Sequence[Worker] = (), request: RoutingRequest | None = None,
             on_close: LeaseEnd | None = None) -> Lease:
        """Open a lease on an admission slot already taken; the worker's in-flight grows (and
        the prefill worker's, for a pair), and so does its prefill backlog (a pair's decode
        worker receives the prompt's KV and prefills nothing). `request`: what the watchers
        are shown (none are without it). `on_close`: this request's own end hook (its flow
        control ticket)."""
        ends: tuple[LeaseEnd, ...] = ()
        watchers = () if request is None else \
            self._watchers if request.answer_seen else self._blind_watchers
        if watchers:
            assert request is not None
            predicted = Predicted.of(choice, time.monotonic(), self._stale)
            ends = tuple(end for watcher in watchers
                         if (end := watcher.opened(choice, request, predicted)) is not None)
        if on_close is not None:
            ends = (*ends, on_close)
        self._workers.acquire(choice.worker)
        if prefill is not None:
            self._workers.acquire(prefill)
        else:
            self._workers.sent_prefill(choice.worker, choice.uncached_tokens)
        lease = Lease(choice, self, prefill, fallbacks, ends)
        self.last_opened = time.monotonic()
        with self._lock:
            self._open[id(lease)] = lease
        return lease

    def close(self, lease: Lease, outcome: Outcome,
              response: ResponseSample | None = None) -> bool:
        outcome = Outcome(outcome)  # a misspelt string fails here, not silently below
        with self._lock:
            if not lease._open:
                return False
            lease._open = False
            self._open.pop(id(lease), None)
            self._outcomes[outcome] = self._outcomes.get(outcome, 0) + 1
            worker = lease._worker
        self._admission.leave()
        verdict = _CIRCUIT_OUTCOMES.get(outcome)
        for held in (worker, lease.prefill):
            if held is not None:
                self._workers.release(held)
        if lease.prefill is None and not lease._prefilled:
            self._workers.ended_prefill(worker, lease.choice.uncached_tokens)
        if verdict is not None:
            # The outcome is the served (decode) engine's. A pair's answer proves its prefill
            # too, but a failure does not blame it: a dead decode engine must not open the
            # circuit of the healthy prefill it was paired with. The prefill's own failures are
            # counted where the picker sends it (picker.pd.prefill).
            self._workers.record_outcome(worker, verdict)
            if verdict and lease.prefill is not None:
                self._workers.record_outcome(lease.prefill, True)
        if response is not None:  # seen passing by: the worker's observed stats learn it
            self._workers.record_response(worker, response)
        answer = response if response is not None else lease._reported
        if answer is not None:
            self._metrics.observe_response(worker.id, answer)
        for end in lease._ends:
            try:
                end(lease, outcome, answer)
            except Exception:  # one watcher's failure must not cost the others or the count
                log.exception("a lease's end hook failed (%s)", getattr(end, "__qualname__", end))
        self._metrics.request_ended(outcome)
        return True

    def move(self, lease: Lease, worker: Worker) -> bool:
        with self._lock:
            if not lease._open or lease._worker is worker:
                return False
            previous, lease._worker = lease._worker, worker
            # Under the book's lock, so a concurrent close releases exactly one of the two.
            self._workers.acquire(worker)
            self._workers.release(previous)
            if lease.prefill is None and not lease._prefilled:  # the prompt went where served
                tokens = lease.choice.uncached_tokens
                self._workers.ended_prefill(previous, tokens)
                self._workers.sent_prefill(worker, tokens)
        self._workers.record_outcome(previous, False)
        return True

    def first_token(self, lease: Lease) -> None:
        with self._lock:
            if not lease._open or lease._prefilled or lease.prefill is not None:
                return  # a pair's decode worker prefilled nothing (its prefill's is not here)
            lease._prefilled = True
            worker = lease._worker
        self._workers.ended_prefill(worker, lease.choice.uncached_tokens)

    def expire(self, now: float | None = None) -> int:
        """Release leases older than limits.timeout_secs (the picker never heard their end)."""
        cutoff = (now if now is not None else time.monotonic()) - self._limits.timeout_secs
        with self._lock:
            stale = [lease for lease in self._open.values() if lease.started < cutoff]
        return sum(lease.release(Outcome.TIMEOUT) for lease in stale)

    def observe(self, worker: Worker, observation: Observation) -> None:
        self._workers.observe(worker, observation)
