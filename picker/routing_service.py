"""RoutingService: the adapters' Picker (picker.routing.contract), over the routing parts.

One request: a model rewrite when one applies (picker.routing.model_rewrite), the remote
tokenizer when configured, loading its LoRA adapter when no engine serves it
(lora.load_on_demand), admission (or flow control, which may hold the request in its band's
queue: picker.routing.flow), the router manager's choice of
router, the decision, then the lease - on one worker with the fallbacks of the router that
chose it (for a gRPC worker with the transcoder of its Generate call, picker.grpc_route), or
on a prefill/decode pair whose protocol step ran (over gRPC: its decode worker's Generate call
carrying the pair's DisaggregatedParams; a prefill that fails frees both and another
pair is tried, pd.max_attempts). The awaited steps run on the picker's loop,
wherever the caller is: `attach` names that loop once the runtime runs.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING

from picker.errors import PrefillFailed, RequestError
from picker.fleet.lora_loading import AdapterLoader
from picker.fleet.registry import Worker, WorkerRegistry
from picker.fleet.worker_spec import ConnectionMode
from picker.grpc_route.engines import engine_for
from picker.grpc_route.transcoder import GrpcTranscoder, WorkerTokenizers
from picker.observe.decisions import DecisionLog, ExplainSettings, explain_line
from picker.observe.metrics import PickerMetrics
from picker.pd.pairing import PairStep
from picker.pd.protocols import Bootstrap
from picker.prefix.producer import PrefixProducer
from picker.routing import hops
from picker.routing.destination import Forward
from picker.routing.flow import FlowControl, Ticket
from picker.routing.leases import Lease, LeaseBook, LeaseEnd
from picker.routing.model_rewrite import ModelRewriter
from picker.routing.outcome import Outcome
from picker.routing.request import RoutingRequest
from picker.routing.response_stats import ResponseSample
from picker.routing.router import Choice, Router
from picker.routing.router_manager import PdRouters, RouterManager

if TYPE_CHECKING:
    from picker.observe.tracing import DecisionTracer

__all__ = ["RoutingService"]


class RoutingService:
    def __init__(self, workers: WorkerRegistry, routers: RouterManager, leases: LeaseBook,
                 metrics: PickerMetrics, prefix: PrefixProducer | None, pairs: PairStep,
                 explain: ExplainSettings, pd_attempts: int, pd_paired: bool,
                 tracer: DecisionTracer | None = None,
                 adapters: AdapterLoader | None = None,
                 rewriter: ModelRewriter | None = None, flow: FlowControl | None = None,
                 decisions: DecisionLog | None = None) -> None:
        """`pd_paired`: prefill/decode pairs may be chosen (enable_igw). `tracer`: a span
        per lease (tracing.enabled). `adapters`: loads a declared LoRA adapter no engine
        serves before routing (lora.load_on_demand). `rewriter`: the model_rewrites rules
        (None: none, and the rewrite header is not read). `flow`: flow control admits
        requests instead of the lease book's admission queue. `decisions`: where flow
        control's refusals are recorded (explain.enabled)."""
        self._rewriter = rewriter
        self._workers = workers
        self._routers = routers
        self._leases = leases
        self._metrics = metrics
        self._remote = None if prefix is None else prefix.remote
        self._pairs = pairs
        self._explain = explain
        self._pd_attempts = pd_attempts
        self._tracer = tracer
        self._adapters = adapters if adapters is not None and adapters.enabled else None
        self._flow = flow
        self._decisions = decisions
        self._awaits = self._remote is not None or leases.queueing or pd_paired \
            or self._adapters is not None or flow is not None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tokenizers = WorkerTokenizers()

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """The loop the awaited steps run on (the runtime's, once started)."""
        self._loop = loop

    @property
    def awaits(self) -> bool:
        return self._awaits

    @property
    def default_policy(self) -> str:
        return self._routers.default.default_policy

    def workers(self) -> Sequence[Worker]:
        return self._workers.workers()

    def worker_at(self, host_port: str) -> Worker | None:
        for worker in self._workers.workers():
            if worker.host_port == host_port:
                return worker
        return None

    def explanation(self, headers: Mapping[str, str], lease: Lease) -> str | None:
        return explain_line(self._explain, headers, lease.choice.decision)

    def reject(self, error: RequestError) -> None:
        self._metrics.request_ended(Outcome.REJECTED)
        self._metrics.rejections.labels(error.code).inc()

    async def route(self, request: RoutingRequest, allowed: Collection[str] | None = None,
                    fallbacks: int = 0) -> Lease:
        if not self._awaits:
            return self._route_now(request, allowed, fallbacks)
        if self._loop is None or asyncio.get_running_loop() is self._loop:
            return await self._route_awaited(request, allowed, fallbacks)
        future = asyncio.run_coroutine_threadsafe(
            self._route_awaited(request, allowed, fallbacks), self._loop)
        return await asyncio.wrap_future(future)

    def route_sync(self, request: RoutingRequest, allowed: Collection[str] | None = None,
                   fallbacks: int = 0) -> Lease:
        if not self._awaits:
            return self._route_now(request, allowed, fallbacks)
        if self._loop is None or not self._loop.is_running():
            raise RuntimeError("the picker runtime is not running: start it first")
        if _running_loop() is self._loop:
            raise RuntimeError("route_sync on the picker's own loop: await route()")
        future = asyncio.run_coroutine_threadsafe(
            self._route_awaited(request, allowed, fallbacks), self._loop)
        return future.result()

    def _rewritten(self, request: RoutingRequest) -> RoutingRequest:
        return request if self._rewriter is None else self._rewriter.apply(request)

    def _route_now(self, request: RoutingRequest, allowed: Collection[str] | None,
                   fallbacks: int) -> Lease:
        started = time.time_ns() if self._tracer is not None else 0
        hops.check(request.headers)
        request = self._rewritten(request)
        self._leases.admit_now()
        return _carrying(self._open(self._routers.default, request, allowed, fallbacks,
                                    started, None), request)

    async def _route_awaited(self, request: RoutingRequest, allowed: Collection[str] | None,
                             fallbacks: int) -> Lease:
        started = time.time_ns() if self._tracer is not None else 0
        hops.check(request.headers)
        request = self._rewritten(request)
        return _carrying(await self._route_as(request, allowed, fallbacks, started), request)

    async def _route_as(self, request: RoutingRequest, allowed: Collection[str] | None,
                        fallbacks: int, started: int) -> Lease:
        if self._remote is not None:
            tokens = await self._remote.tokens(request)
            if tokens is None:
                self._metrics.tokenizer_fallbacks.inc()
            else:
                request = replace(request, tokens=tokens)
        if self._adapters is not None:
            await self._adapters.ensure(request)  # before admission: no slot held meanwhile
        queued = time.monotonic()
        ticket = await self._admit(request)
        waited = time.monotonic() - queued
        try:
            target = self._routers.select(request)
        except RequestError:
            self._cancel(ticket)
            raise
        if isinstance(target, PdRouters):
            return await self._open_pair(target, request, allowed, started, ticket, waited)
        return self._open(target, request, allowed, fallbacks, started, ticket, waited)

    async def _admit(self, request: RoutingRequest) -> Ticket | None:
        """Take an admission slot: from flow control when configured (the ticket that the
        lease hands back at its end), else from the lease book's queue."""
        if self._flow is None:
            await self._leases.admit()
            return None
        ask = self._flow.ask(request)
        arrived = time.monotonic()
        try:
            ticket = await self._flow.controller.admit(ask)
        except RequestError as refused:
            if self._decisions is not None:
                self._decisions.refused_in_flow(request, ask.key.fairness_id, ask.key.priority,
                                                refused.code, time.monotonic() - arrived)
            raise
        try:
            self._leases.admit_now()  # does not refuse: flow control holds the same limit
        except BaseException:
            ticket.cancel()
            raise
        return ticket

    def _cancel(self, ticket: Ticket | None) -> None:
        """Give back what `_admit` took when no lease was opened on it."""
        self._leases.cancel_admission()
        if ticket is not None:
            ticket.cancel()

    def _lease(self, choice: Choice, ticket: Ticket | None, prefill: Worker | None = None,
               fallbacks: Sequence[Worker] = (), request: RoutingRequest | None = None) -> Lease:
        lease = self._leases.open(choice, prefill, fallbacks, request,
                                  None if ticket is None else _finishes(ticket))
        if ticket is not None:
            ticket.opened()
            lease.preempted_through(ticket.preemptible)
            if choice.decision is not None:
                key = ticket.ask.key
                choice.decision.waited(key.fairness_id, key.priority, ticket.waited_secs)
        return lease

    def _open(self, router: Router, request: RoutingRequest,
              allowed: Collection[str] | None, fallbacks: int, started_ns: int,
              ticket: Ticket | None, waited: float = 0.0) -> Lease:
        """On an admission slot already taken: decide, then open the lease (or give the slot
        back if no worker fits). The fallbacks come from the router that chose."""
        try:
            choice = router.choose(request, allowed)
        except RequestError:
            self._cancel(ticket)
            raise
        worker = choice.worker
        transcoder = None
        if worker.spec.connection_mode is ConnectionMode.GRPC and not request.caller_transcodes:
            try:
                transcoder = self._transcoder(worker, request)
            except RequestError:
                self._cancel(ticket)
                raise
        # A fallback must speak what the request was rewritten into (without enable_igw one
        # router holds workers of both connection modes).
        others = [w for w in router.fallbacks(request, worker, fallbacks, allowed)
                  if w.spec.connection_mode is worker.spec.connection_mode]
        lease = self._lease(choice, ticket, fallbacks=others, request=request)
        if transcoder is not None:
            lease.transcode_as(transcoder)
        if self._tracer is not None:
            self._tracer.trace(lease, request, started_ns, waited)
        return lease

    async def _open_pair(self, routers: PdRouters, request: RoutingRequest,
                         allowed: Collection[str] | None, started_ns: int,
                         ticket: Ticket | None, waited: float) -> Lease:
        """Choose a prefill/decode pair, hold both, and run the pair's protocol step. A pair
        is bound to its decode worker: its lease has no fallbacks."""
        failed: set[str] = set()
        for attempt in range(self._pd_attempts):
            try:
                prefill_choice = routers.prefill.choose(request, self._excluding(allowed, failed))
                decode = routers.decode.choose(request, allowed)
            except RequestError:
                self._cancel(ticket)
                raise
            prefill = prefill_choice.worker
            if decode.decision is not None and prefill_choice.decision is not None:
                decode.decision.paired_with(prefill_choice.decision)
            lease = self._lease(decode, ticket, prefill, request=request)
            try:
                if decode.worker.spec.connection_mode is ConnectionMode.GRPC:
                    lease.transcode_as(await self._pairs.transcoded(
                        prefill, decode.worker, partial(self._transcoder, decode.worker, request)))
                else:
                    lease.forward_as(await self._pairs.forward(request, prefill, decode.worker))
                if self._tracer is not None:
                    self._tracer.trace(lease, request, started_ns, waited)
                return lease
            except PrefillFailed:
                failed.add(prefill.id)
                lease.release(Outcome.CANCELLED)  # the prefill's failure is already recorded
                if attempt + 1 == self._pd_attempts:
                    raise
                self._leases.admit_now()  # the next pair's slot
                if ticket is not None:  # and its place in flow control, held all along
                    ticket = ticket.again()
            except BaseException:
                # Cancelled (the client went away) or failed unexpectedly: nobody else holds
                # this lease, so it is released here or never.
                lease.release(Outcome.CANCELLED)
                raise
        raise AssertionError("unreachable: pd.max_attempts >= 1")

    def _transcoder(self, worker: Worker, request: RoutingRequest,
                    bootstrap: Bootstrap | None = None) -> GrpcTranscoder:
        """The Generate call for a gRPC worker (`bootstrap`: its pair's rendezvous, for a
        decode worker); raises RequestError when the request cannot be sent to it."""
        spec = worker.spec
        return GrpcTranscoder(engine_for(spec), self._tokenizers.for_worker(worker), request,
                              spec.tool_parser, spec.reasoning_parser, bootstrap)

    def _excluding(self, allowed: Collection[str] | None,
                   failed: set[str]) -> Collection[str] | None:
        if not failed:
            return allowed
        ids = allowed if allowed is not None else [w.id for w in self._workers.workers()]
        return set(ids) - failed


def _carrying(lease: Lease, request: RoutingRequest) -> Lease:
    """The lease carries the request's hop list on (picker.routing.hops); a rewritten
    request's lease sends the engine the body naming the target model, in both body modes,
    unless a prefill/decode protocol's body (built from the rewritten request's, so naming the
    target too) already replaces it."""
    lease.hop_as(hops.onward(request.headers))
    forward = lease.forward
    if request.rewrite is not None and (forward is None or forward.body is None):
        body = json.dumps(request.body, ensure_ascii=False).encode()
        lease.forward_as(Forward(body=body, headers=() if forward is None else forward.headers))
    return lease


def _finishes(ticket: Ticket) -> LeaseEnd:
    """The lease end that hands a flow control ticket back with the tokens generated."""

    def end(lease: Lease, outcome: Outcome, response: ResponseSample | None) -> None:
        ticket.finish(float(lease.generated_tokens(response)))

    return end


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
