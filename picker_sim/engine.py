"""The simulated engine's state and latency model, free of HTTP so it is easy to reason about.

A request waits for one of `max_concurrency` running slots (continuous batching: the rest
queue, which is what `num_requests_waiting` shows), then pays prefill for the prompt tokens its
prefix cache does not hold, then decodes token by token with a step time that grows with the
batch. So cache hits shorten time to first token the way they do on a real engine, and routing
quality shows up in latency, not only in a hit counter.

With `max_batched_tokens` set, prefills and decodes are no longer private sleeps: they share
each step's token budget the way vLLM's scheduler shares `max_num_batched_tokens`
(picker_sim.scheduler), so prefills queue behind each other and slow the decodes beside them.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from picker_sim.cache import BlockCache, Claim, token_block_hashes
from picker_sim.lora import SimLoras
from picker_sim.run_cache import RunCache
from picker_sim.scheduler import StepScheduler

__all__ = [
    "PROFILES", "WORDS", "SimConfig", "SimEngine", "SimRun", "prompt_tokens", "token_ids",
    "toy_tokens",
]

# Tokens decoded per timer by `SimRun.decode` without the step scheduler.
_DECODE_RUN = 16
# What the sim generates, cycled (and, over gRPC, encoded with its tokenizer).
WORDS = ("the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "again")


@dataclass(slots=True)
class SimConfig:
    model: str = "sim-model"
    worker_id: str = "sim"
    ttft_ms: float = 20.0  # fixed part of time to first token (scheduling, sampling)
    tpot_ms: float = 2.0  # decode step time with a batch of one
    max_tokens_default: int = 16
    max_concurrency: int = 64  # running requests; more wait
    failure_rate: float = 0.0
    seed: int | None = None
    api_key: str | None = None  # when set, OpenAI endpoints require Authorization: Bearer it
    prefill_tokens_per_sec: float = 0.0  # 0: prompts cost nothing beyond ttft_ms
    decode_ms_per_running: float = 0.0  # step time added per running request (batch cost)
    # 0: each prefill is its own sleep; > 0: vLLM's max_num_batched_tokens, a per-step token
    # budget that prefill chunks and decode tokens share (picker_sim.scheduler).
    max_batched_tokens: int = 0
    block_tokens: int = 16
    cache_blocks: int = 4096
    # KV events in vLLM's format over ZMQ (picker_sim.kv_publisher); off without a port.
    kv_events_port: int | None = None
    kv_replay_port: int | None = None
    kv_encoding: str = "map"  # "map" (vLLM 0.33, tagged events) or "array" (vLLM 0.11)
    # Prefill/decode disaggregation (picker_sim.pd): "regular", "prefill" or "decode", over
    # "sglang" (bootstrap rooms) or "nixl" (kv_transfer_params).
    role: str = "regular"
    pd_protocol: str = "sglang"
    pd_wait_ms: float = 5000.0  # how long a decode sim waits for its prefill
    # LoRA (picker_sim.lora): vLLM's --max-loras (0: LoRA off, no adapter and no LoRA metric),
    # the adapters registered at start ("name=path", or a name, served from /adapters/<name>),
    # what copying an adapter into a GPU slot costs, and whether /v1/load_lora_adapter and
    # /v1/unload_lora_adapter exist (vLLM: VLLM_ALLOW_RUNTIME_LORA_UPDATING).
    max_loras: int = 0
    lora_modules: tuple[str, ...] = ()
    lora_load_ms: float = 0.0
    runtime_lora_updating: bool = False

    def __post_init__(self) -> None:
        at_least_0, at_least_1 = "at least 0", "at least 1"
        checks = {  # field: (valid, what a valid value is)
            "model": (bool(self.model), "a non-empty name"),
            "worker_id": (bool(self.worker_id), "a non-empty name"),
            "ttft_ms": (self.ttft_ms >= 0, at_least_0),
            "tpot_ms": (self.tpot_ms >= 0, at_least_0),
            "max_tokens_default": (self.max_tokens_default >= 1, at_least_1),
            "max_concurrency": (self.max_concurrency >= 1, at_least_1),
            "failure_rate": (0.0 <= self.failure_rate <= 1.0, "between 0 and 1"),
            "prefill_tokens_per_sec": (self.prefill_tokens_per_sec >= 0, at_least_0),
            "decode_ms_per_running": (self.decode_ms_per_running >= 0, at_least_0),
            "max_batched_tokens": (self.max_batched_tokens >= 0, at_least_0),
            "block_tokens": (self.block_tokens >= 1, at_least_1),
            "cache_blocks": (self.cache_blocks >= 1, at_least_1),
            "kv_encoding": (self.kv_encoding in ("map", "array"), "map or array"),
            "kv_replay_port": (self.kv_replay_port is None or self.kv_events_port is not None,
                               "given only with kv_events_port"),
            "role": (self.role in ("regular", "prefill", "decode"),
                     "regular, prefill or decode"),
            "pd_protocol": (self.pd_protocol in ("sglang", "nixl", "sidecar")
                            and (self.pd_protocol != "sidecar" or self.role == "decode"),
                            "sglang or nixl, or sidecar with role decode"),
            "pd_wait_ms": (self.pd_wait_ms > 0, "more than 0"),
            "max_loras": (self.max_loras >= 0, at_least_0),
            "lora_modules": (not self.lora_modules or self.max_loras >= 1,
                             "empty unless max_loras is at least 1"),
            "lora_load_ms": (self.lora_load_ms >= 0, at_least_0),
            "runtime_lora_updating": (not self.runtime_lora_updating or self.max_loras >= 1,
                                      "false unless max_loras is at least 1"),
        }
        for name, (ok, valid) in checks.items():
            if not ok:
                raise ValueError(f"sim config: {name} must be {valid}, got "
                                 f"{getattr(self, name)!r}")

    def adapters(self) -> dict[str, str]:
        """The start-up adapters, name -> path (vLLM's --lora-modules name=path)."""
        pairs = (m.partition("=") for m in self.lora_modules)
        return {name: path or f"/adapters/{name}" for name, _, path in pairs}

    @classmethod
    def from_profile(cls, profile: str, **overrides: Any) -> SimConfig:
        if profile not in PROFILES:
            raise ValueError(f"unknown sim profile {profile!r} (known: {', '.join(PROFILES)})")
        return cls(**{**PROFILES[profile], **overrides})


# Named latency/cache profiles so benchmarks are reproducible. "8b-h100-like" is shaped after
# an 8B model on one H100 (prefill in the tens of thousands of tokens/s, decode steps of a few
# ms growing with the batch), scaled to the toy tokenizer; the cache is sized so that a fleet
# holds a benchmark's working set only if requests sharing a prefix share an engine.
PROFILES: Mapping[str, Mapping[str, Any]] = {
    "8b-h100-like": {
        "ttft_ms": 5.0, "tpot_ms": 6.0, "prefill_tokens_per_sec": 20_000.0,
        "decode_ms_per_running": 0.1, "max_concurrency": 32, "block_tokens": 16,
        "cache_blocks": 2_500,
    },
    # The same engine scheduled as vLLM does on an H100 (the OpenAI server's default budget
    # of 8,192 tokens per step): prefills contend with each other and with decodes.
    "8b-h100-batched": {
        "ttft_ms": 5.0, "tpot_ms": 6.0, "prefill_tokens_per_sec": 20_000.0,
        "decode_ms_per_running": 0.1, "max_concurrency": 32, "block_tokens": 16,
        "cache_blocks": 2_500, "max_batched_tokens": 8_192,
    },
    # The same engine at real token counts, for replays of traces (picker_bench.replay): its
    # cache holds what an H100 holds for an 8B model in fp16 - 128 KiB of KV per token (32
    # layers x 8 KV heads x 128 dims x key and value x 2 bytes), ~55 GiB left beside the
    # weights: ~450k tokens.
    "8b-h100-tokens": {
        "ttft_ms": 5.0, "tpot_ms": 6.0, "prefill_tokens_per_sec": 20_000.0,
        "decode_ms_per_running": 0.1, "max_concurrency": 64, "block_tokens": 16,
        "cache_blocks": 28_000,
    },
    "instant": {"ttft_ms": 0.0, "tpot_ms": 0.0},
}


def toy_tokens(text: str) -> list[str]:
    """The simulator's tokenizer: whitespace words. Deterministic, dependency-free."""
    return text.split()


def token_ids(tokens: Sequence[str]) -> list[int]:
    """Stable ids for the toy tokens (what the simulated /tokenize returns): 32-bit, so a
    vocabulary of thousands of words has no two sharing an id and an hf tokenizer file can
    reproduce them (picker_sim.hf_twin)."""
    return [zlib.crc32(token.encode()) for token in tokens]


def prompt_tokens(body: Mapping[str, Any]) -> list[str]:
    """What the engine computes: messages in order (role, then content), or the prompt."""
    messages = body.get("messages")
    if isinstance(messages, list):
        text = " ".join(f"{m.get('role', '')} {m.get('content', '')}"
                        for m in messages if isinstance(m, dict))
    else:
        text = str(body.get("prompt", ""))
    return toy_tokens(text)


class KvEventSink(Protocol):
    """Told of every change to the block cache (picker_sim.server publishes them)."""

    def claimed(self, prompt: Sequence[str], hashes: Sequence[int], claim: Claim) -> None: ...

    def dropped(self, hashes: Sequence[int], everything: bool) -> None: ...


@dataclass(slots=True)
class SimRun:
    """One admitted request: what it costs and what it holds in the cache."""

    engine: SimEngine
    prompt_tokens: int
    cached_tokens: int
    arrived: float = 0.0  # engine.clock() when the request reached the engine
    finished: bool = False

    def finish(self) -> None:
        """The last token is out: the request counts as completed, whatever the client does next."""
        if not self.finished:
            self.finished = True
            self.engine.completed += 1

    async def first_token(self) -> None:
        engine = self.engine
        config = engine.config
        uncached = self.prompt_tokens - self.cached_tokens
        if engine.scheduler is not None:
            await engine.sleep(config.ttft_ms / 1000)
            prefill = await engine.scheduler.prefill(uncached)
        else:
            prefill = config.ttft_ms / 1000
            if config.prefill_tokens_per_sec:
                prefill += uncached / config.prefill_tokens_per_sec
            await engine.sleep(prefill)
        engine.prefill_secs_total += prefill
        engine.prefill_tokens_total += uncached
        engine.ttft_secs_total += engine.clock() - self.arrived
        engine.ttft_count += 1

    async def next_token(self) -> None:
        await self.decode(1)

    async def decode(self, tokens: int) -> None:
        """The next `tokens` tokens. Under the step scheduler each is a step shared with the
        batch; otherwise they are decoded `_DECODE_RUN` at a time, each run's step time taken
        at the batch size when it starts: the same per-token cost as one sleep per token (what
        a streaming response needs), with one timer per run instead of per token (what a
        replay of hundreds of thousands of requests needs)."""
        engine = self.engine
        config = engine.config
        while tokens > 0:
            started = engine.clock()
            if engine.scheduler is not None:
                run = 1
                await engine.scheduler.decode()
            else:
                run = min(tokens, _DECODE_RUN)
                await engine.sleep(run * (config.tpot_ms
                                           + config.decode_ms_per_running * engine.running)
                                    / 1000)
            engine.itl_secs_total += engine.clock() - started
            engine.itl_count += run
            tokens -= run


@dataclass(slots=True)
class SimEngine:
    config: SimConfig
    running: int = 0
    waiting: int = 0
    requests_total: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    prompt_tokens_total: int = 0  # vllm:prefix_cache_queries_total counts these
    cached_tokens_total: int = 0  # vllm:prefix_cache_hits_total
    # vLLM's latency histograms, as sum and count: time to first token (queueing included),
    # prefill time and the tokens it computed, decode steps (inter-token latency).
    ttft_secs_total: float = 0.0
    ttft_count: int = 0
    prefill_secs_total: float = 0.0
    prefill_tokens_total: int = 0
    itl_secs_total: float = 0.0
    itl_count: int = 0
    # Knobs tests turn through POST /sim/control: what /health answers and how slowly, and
    # load the engine reports beyond its real state.
    health_status: int = 200
    health_delay_ms: float = 0.0
    extra_waiting: int = 0
    kv_usage_override: float | None = None
    # 1: a NIXL prefill sim answers as vLLM's NixlConnector does for a prefill that did not
    # end by its length cap (EOS or a stop string first; aborted): no kv_transfer_params.
    prefill_stops_early: int = 0
    lora_load_calls: int = 0  # POST /v1/load_lora_adapter received, refused ones included
    events: KvEventSink | None = None
    # What the engine's own timings read: the loop's clock when a replay runs it in virtual
    # time (picker_bench.replay.clock).
    clock: Callable[[], float] = time.monotonic
    # How the engine waits out a prefill or a decode run: a replay's loop has a leaner sleep.
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    cache: BlockCache = field(init=False)
    # The same cache for prompts given as runs of blocks (replays); an engine serves one kind.
    runs_cache: RunCache = field(init=False)
    loras: SimLoras | None = field(init=False)
    scheduler: StepScheduler | None = field(init=False)
    _rng: random.Random = field(init=False)
    _slots: asyncio.Semaphore = field(init=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.config.seed)
        self._slots = asyncio.Semaphore(self.config.max_concurrency)
        self.cache = BlockCache(self.config.cache_blocks)
        self.runs_cache = RunCache(self.config.cache_blocks)
        config = self.config
        self.loras = SimLoras(config.model, config.max_loras, config.lora_load_ms,
                              config.adapters()) if config.max_loras else None
        self.scheduler = StepScheduler(
            config.max_batched_tokens, config.tpot_ms, config.decode_ms_per_running,
            config.prefill_tokens_per_sec, self.clock) if config.max_batched_tokens else None

    def requests_waiting(self) -> int:
        """vLLM's num_requests_waiting: waiting for a slot, or admitted but not yet given a
        prefill chunk by the step scheduler."""
        queued = self.scheduler.unstarted if self.scheduler is not None else 0
        return self.waiting + queued + self.extra_waiting

    def requests_running(self) -> int:
        """vLLM's num_requests_running: admitted and scheduled at least once."""
        return self.running - (self.scheduler.unstarted if self.scheduler is not None else 0)

    @asynccontextmanager
    async def admitted(self, prompt: Sequence[str] = (), prefilled: bool = False,
                       adapter: str | None = None) -> AsyncIterator[SimRun]:
        """Wait for a running slot, claim the prompt's cache blocks, release both at the end.
        A request on a LoRA `adapter` first waits for the adapter's place in the batch and
        pays its copy into a GPU slot if it is not in one (picker_sim.lora).

        A request that leaves before `SimRun.finish()` counts as cancelled: the client went away
        while it queued (CancelledError in the wait), while it generated (CancelledError in a
        sleep), or while its stream was parked at a `yield` (GeneratorExit when the server
        closes the abandoned generator).
        """
        hashes = token_block_hashes(prompt, self.config.block_tokens)
        events = self.events
        claimed = None if events is None else \
            (lambda claim: events.claimed(prompt, hashes, claim))
        async with contextlib.AsyncExitStack() as stack:
            if adapter is not None and self.loras is not None:
                self.waiting += 1
                try:
                    await stack.enter_async_context(self.loras.serving(adapter))
                except asyncio.CancelledError:
                    self.requests_total += 1
                    self.cancelled += 1
                    raise
                finally:
                    self.waiting -= 1
            async with self.admitted_blocks(hashes, len(prompt), prefilled, claimed) as run:
                yield run

    async def generated(self, prompt: Sequence[str], output_tokens: int, prefilled: bool = False,
                        adapter: str | None = None) -> SimRun:
        """A non-streamed answer's whole run: admitted, first token, the rest decoded."""
        async with self.admitted(prompt, prefilled=prefilled, adapter=adapter) as run:
            await run.first_token()
            await run.decode(output_tokens - 1)
            run.finish()
        return run

    def admitted_blocks(self, hashes: Sequence[int], tokens: int, prefilled: bool = False,
                        claimed: Callable[[Claim], None] | None = None,
                        ) -> contextlib.AbstractAsyncContextManager[SimRun]:
        """`admitted` for a prompt known by its cache block hashes and length alone;
        `claimed` hears what the request did to the cache."""
        def claim() -> tuple[int, Callable[[], None]]:
            held = self.cache.acquire(hashes)
            if claimed is not None:
                claimed(held)
            return held.hit_blocks, lambda: self.cache.release(held)
        return self._admitted(claim, tokens, prefilled)

    def admitted_runs(self, runs: Sequence[tuple[Hashable, int]], tokens: int,
                      ) -> contextlib.AbstractAsyncContextManager[SimRun]:
        """`admitted` for a prompt known by runs of cache blocks (a replayed trace's blocks,
        which have no text) and its length, on `runs_cache` (picker_sim.run_cache)."""
        def claim() -> tuple[int, Callable[[], None]]:
            held = self.runs_cache.acquire(runs)
            return held.hit_blocks, lambda: self.runs_cache.release(held)
        return self._admitted(claim, tokens, False)

    @asynccontextmanager
    async def _admitted(self, claim: Callable[[], tuple[int, Callable[[], None]]], tokens: int,
                        prefilled: bool) -> AsyncIterator[SimRun]:
        """Wait for a running slot, `claim` the prompt's cache blocks (-> hit blocks and how to
        release them), release both at the end."""
        self.requests_total += 1
        self.waiting += 1
        arrived = self.clock()
        try:
            await self._slots.acquire()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.waiting -= 1
        self.running += 1
        hit_blocks, release = claim()
        # A decode worker of a PD pair received the prompt's KV: it pays no prefill.
        cached = tokens if prefilled else min(tokens, hit_blocks * self.config.block_tokens)
        self.prompt_tokens_total += tokens
        self.cached_tokens_total += cached
        run = SimRun(self, tokens, cached, arrived)
        try:
            yield run
        except (asyncio.CancelledError, GeneratorExit):
            if not run.finished:
                self.cancelled += 1
            raise
        finally:
            release()
            self.running -= 1
            self._slots.release()

    def reset_prefix_cache(self) -> None:
        dropped = self.cache.clear()
        if self.events is not None:
            self.events.dropped(dropped, everything=not len(self.cache))

    def should_fail(self) -> bool:
        return self.config.failure_rate > 0 and self._rng.random() < self.config.failure_rate

    def output_tokens(self, body: Mapping[str, Any]) -> int:
        """`max_completion_tokens`, else `max_tokens`, else the configured default.

        A present but unusable value is the client's mistake, answered (as vLLM does) with an
        error naming the field rather than a silent default.
        """
        for key in ("max_completion_tokens", "max_tokens"):
            value = body.get(key)
            if value is None:
                continue
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
            raise ValueError(f"{key} must be a positive integer, got {value!r}"[:200])
        return self.config.max_tokens_default

    @staticmethod
    def token(index: int) -> str:
        return WORDS[index % len(WORDS)] + " "

    def kv_cache_usage(self) -> float:
        """Share of running slots in use, standing in for vLLM's KV usage (0..1)."""
        if self.kv_usage_override is not None:
            return self.kv_usage_override
        return min(1.0, self.running / self.config.max_concurrency)

