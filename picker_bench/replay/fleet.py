"""One policy replayed against a simulated fleet, in process and in virtual time.

The fleet is the picker's own routing core - the registry, the router with the policy built
from the same configuration `serve` reads, the prefix producer and the lease book - in front
of `picker_sim` engines (their slots, block cache and latency model), with nothing between
them: a request is routed, admitted by its engine, prefilled and decoded by the engine's
model, and its lease released with what a proxy would have observed (TTFT, usage), so the
policies that learn engine speed learn it here too. Engine metrics are "scraped" into the
registry every `load.interval_secs` of virtual time.

Virtual time (picker_bench.replay.clock) makes it faster than real time and deterministic
for a seed. Two clocks stay real: a scrape is stamped with time.monotonic() so the
policies' staleness checks (which read time.monotonic()) see it fresh, and the picker's
prefill backlog (picker.speed.PrefillBacklog) drains in real time, so it counts every open
request's prompt as still ahead - bounded by the open requests, as it is live.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

from picker.config import PickerConfig
from picker.errors import RequestError
from picker.fleet.engine_load import EngineCounter, EngineLoad
from picker.fleet.registry import Worker, WorkerRegistry
from picker.fleet.worker_spec import WorkerSpec
from picker.observe.metrics import PickerMetrics
from picker.policies import PolicyParams, parse_params
from picker.policies.base import SeededParams
from picker.prefix.producer import PrefixProducer
from picker.routing.leases import LeaseBook
from picker.routing.outcome import Outcome
from picker.routing.request import Api, RoutingRequest
from picker.routing.response_stats import ResponseSample, Usage
from picker.routing.router import Router
from picker.trace.line import TraceLine
from picker_bench.replay.clock import VirtualTimeLoop
from picker_bench.replay.prompts import BlockTexts, length_text, prompt_shape
from picker_sim.engine import SimConfig, SimEngine

__all__ = ["SimulatedFleet", "Served", "as_trace", "engine_id", "policy_params", "replay_policy"]

_MODEL = "trace-model"  # what a line without a model asks for
_APIS = {api.value: api for api in Api}  # a line's `api`; without one (or unknown), chat
# Container allocations between two young-generation collections during a replay (Python's
# default is 700): see `_rare_collections`.
_YOUNG_THRESHOLD = 50_000


@dataclass(frozen=True, slots=True)
class SimulatedFleet:
    """What every policy of one replay runs against."""

    config: PickerConfig  # policies' parameters, prefix, load and limits settings
    engine: SimConfig  # each engine's profile
    engines: int
    speedup: float = 1.0  # arrivals compressed by this factor
    seed: int = 0


@dataclass(frozen=True, slots=True)
class Served:
    """One replayed request; `worker` None when the picker refused it."""

    worker: str | None
    prompt_tokens: int
    cached_tokens: int
    ttft_secs: float
    e2e_secs: float


def replay_policy(lines: Sequence[TraceLine], policy: str, fleet: SimulatedFleet) -> list[Served]:
    """Every line through `policy`, in trace order; deterministic for `fleet.seed`."""
    loop = VirtualTimeLoop()
    try:
        with _rare_collections():
            return loop.run_until_complete(_Run(lines, policy, fleet, loop).run())
    finally:
        loop.close()


@contextlib.contextmanager
def _rare_collections() -> Iterator[None]:
    """Python's cyclic garbage collector, rarely and not over what existed before the replay.

    Why: a replay allocates containers by the million (a task, timers and futures per request,
    a prompt's token ids and blocks) that reference counting frees, and the default threshold
    collected the young generation every 700 allocations, re-examining the long-lived trace
    and indexes in older collections: 7-8% of a weighted replay's CPU with the prefix index
    (0.83 s of 10.6 s in gc.callbacks, 283 collections; 0.10 s, 2 collections, at 50,000 with
    the objects made before the replay frozen). No result depends on when cycles are freed.
    """
    thresholds = gc.get_threshold()
    freezing = gc.get_freeze_count() == 0  # a caller's own frozen objects stay frozen
    if freezing:
        gc.freeze()
    gc.set_threshold(_YOUNG_THRESHOLD, *thresholds[1:])
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        if freezing:
            gc.unfreeze()


def policy_params(config: PickerConfig, policy: str, seed: int) -> PolicyParams:
    """The policy's parameters as configured (defaults when it is not), seeded when the
    configuration leaves its seed unset."""
    params = config.policy_params().get(policy) or parse_params(
        policy, {}, "--policies", config.load.stale_after_secs)
    if isinstance(params, SeededParams) and params.seed is None:
        params = params.model_copy(update={"seed": seed})
    return params


def engine_id(index: int) -> str:
    """The replay's name for engine `index`."""
    return f"sim-{index}"


def as_trace(lines: Sequence[TraceLine], served: Sequence[Served],
             policy: str) -> list[TraceLine]:
    """The replayed requests as a trace, with what the simulation observed (what
    `--calibrate` reads, as it reads a recorded trace)."""
    return [replace(line, worker=one.worker, policy=policy,
                    ttft_ms=round(one.ttft_secs * 1000, 3),
                    latency_ms=round(one.e2e_secs * 1000, 3),
                    cached_tokens=one.cached_tokens, outcome="completed")
            for line, one in zip(lines, served, strict=True) if one.worker is not None]


class _Unobserved(PickerMetrics):
    """The picker's metrics without the per-request observations: a replay's are never read,
    and their histograms and labelled counters were ~4% of it. Nothing a policy reads is a
    metric, so the decisions are the same."""

    def decided(self, policy: str, worker_id: str, model: str, match_rate: float | None,
                seconds: float) -> None:
        pass

    def observe_response(self, worker_id: str, sample: ResponseSample) -> None:
        pass

    def request_ended(self, outcome: str) -> None:
        pass


class _Run:
    def __init__(self, lines: Sequence[TraceLine], policy: str, fleet: SimulatedFleet,
                 loop: VirtualTimeLoop) -> None:
        config = fleet.config
        self._lines = lines
        self._fleet = fleet
        self._registry = WorkerRegistry(circuit=config.circuit)
        self._engines: dict[str, SimEngine] = {}
        for i in range(fleet.engines):
            worker = self._registry.add(WorkerSpec(
                url=f"http://{engine_id(i)}.replay.invalid:8000", id=engine_id(i)))
            self._engines[worker.id] = SimEngine(
                replace(fleet.engine, worker_id=worker.id, seed=fleet.seed + i),
                clock=loop.time, sleep=loop.sleep)
        metrics = _Unobserved(self._registry)
        params = policy_params(config, policy, fleet.seed)
        self._prefix = PrefixProducer(config.prefix) \
            if config.prefix.enabled or params.needs_prefix() else None
        if self._prefix is not None:
            self._registry.add_listener(self._prefix)
        self._router = Router(self._registry, policy, {policy: params}, metrics, self._prefix,
                              config.limits, config.load.stale_after_secs)
        self._book = LeaseBook(self._registry, config.limits, metrics)
        self._served: list[Served | None] = [None] * len(lines)
        # The text only a text-matching policy reads; the others, its length (tokens go to
        # the prefix producer whenever there is one).
        self._texts = BlockTexts(fleet.engine.block_tokens) if params.matches_text() else None

    async def run(self) -> list[Served]:
        loop = asyncio.get_running_loop()
        scraper = loop.create_task(self._scrape_forever())
        pending: list[asyncio.Task[None]] = []
        start = self._lines[0].timestamp if self._lines else 0.0
        for index, line in enumerate(self._lines):
            due = (line.timestamp - start) / 1000 / self._fleet.speedup
            if due > loop.time():
                await asyncio.sleep(due - loop.time())
            pending.append(loop.create_task(self._one(index, line)))
        await asyncio.gather(*pending)
        scraper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await scraper
        return [s for s in self._served if s is not None]

    async def _one(self, index: int, line: TraceLine) -> None:
        loop = asyncio.get_running_loop()
        arrived = loop.time()
        engine_config = self._fleet.engine
        shape = prompt_shape(line, index, engine_config.block_tokens)
        runs = shape.engine_runs(engine_config.block_tokens)
        request = RoutingRequest(
            model=line.model or _MODEL, api=_APIS.get(line.api or "", Api.CHAT),
            session_key=line.session,
            prompt_text=length_text(runs) if self._texts is None else self._texts.of(shape, runs),
            tokens=shape.token_ids() if self._prefix is not None else None)
        try:
            self._book.admit_now()
            try:
                choice = self._router.choose(request)
            except RequestError:
                self._book.cancel_admission()
                raise
        except RequestError:
            self._served[index] = Served(None, shape.tokens, 0, 0.0, 0.0)
            return
        lease = self._book.open(choice)
        engine = self._engines[choice.worker.id]
        output = max(1, line.output_length)
        async with engine.admitted_runs(runs, shape.tokens) as run:
            await run.first_token()
            first = loop.time()
            await run.decode(output - 1)
            run.finish()
        ended = loop.time()
        lease.release(Outcome.COMPLETED, ResponseSample(
            ttft_secs=first - arrived,
            per_chunk_secs=(ended - first) / (output - 1) if output > 1 else None,
            chunks=output, usage=Usage(shape.tokens, output, run.cached_tokens)))
        self._served[index] = Served(choice.worker.id, shape.tokens, run.cached_tokens,
                                     first - arrived, ended - arrived)

    async def _scrape_forever(self) -> None:
        period = self._fleet.config.load.interval_secs
        while True:
            for worker in self._registry.workers():
                self._registry.set_engine_load(worker, self._scrape(worker))
            await asyncio.sleep(period)

    def _scrape(self, worker: Worker) -> EngineLoad:
        engine = self._engines[worker.id]
        config = engine.config
        return EngineLoad(
            scraped_at=time.monotonic(), running=engine.requests_running(),
            waiting=engine.requests_waiting(), kv_usage=engine.runs_cache.usage(),
            block_size=config.block_tokens, num_gpu_blocks=config.cache_blocks,
            counters={
                EngineCounter.PROMPT_TOKENS: engine.prompt_tokens_total,
                EngineCounter.PREFIX_QUERIES: engine.prompt_tokens_total,
                EngineCounter.PREFIX_HITS: engine.cached_tokens_total,
                EngineCounter.TTFT_SUM: engine.ttft_secs_total,
                EngineCounter.TTFT_COUNT: engine.ttft_count,
                EngineCounter.ITL_SUM: engine.itl_secs_total,
                EngineCounter.ITL_COUNT: engine.itl_count,
                EngineCounter.PREFILL_SECS: engine.prefill_secs_total,
                EngineCounter.PREFILL_TOKENS: engine.prefill_tokens_total,
            })
