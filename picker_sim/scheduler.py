"""A vLLM-style step scheduler for the simulated engine: prefills and decodes share one budget.

Why: when each request's prefill is its own sleep, prefills never wait for each other or for
decodes, so the only time to first token a router can save is a cold prefill moved to a faster
engine, and "how much prefill is queued on that engine" - what a real fleet's TTFT tail is made
of - does not exist. This module schedules the way vLLM's engine does, so that it does.

Facts taken from vLLM (v1 engine):
- `Scheduler.schedule` (vllm/v1/core/sched/scheduler.py) has no prefill or decode phase: each
  step it hands out tokens from one budget, `max_num_batched_tokens`, first to the running
  requests (a decoding request takes one token, a prefill in progress its next chunk), then
  to waiting requests in arrival order; a prompt longer than what is left of the budget is
  chunked (`num_new_tokens = min(num_new_tokens, token_budget)`) and continues next step.
- A prefix-cache hit leaves only the uncached tokens to compute, but at least one: the last
  prompt token is always recomputed to sample the first output token.
- The OpenAI server's default budget is 8,192 tokens on GPUs of 70 GiB or more (H100), 2,048
  otherwise (vllm/engine/arg_utils.py, `EngineArgs.get_batch_defaults`).
- A step is one forward pass over all scheduled tokens, so its time grows with them. Here: a
  fixed cost (`tpot_ms`, reading the weights), `decode_ms_per_running` per decoding request,
  and the step's prefill tokens at `prefill_tokens_per_sec`.

What a router then sees: two prefills arriving together both finish in about twice the time of
one alone, and decodes sharing a step with a prefill chunk get a slower step (chunked-prefill
inter-token latency spikes). A request is "waiting" (vLLM's `num_requests_waiting`) until its
first chunk is scheduled.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = ["Step", "StepScheduler", "plan_step"]


@dataclass(frozen=True, slots=True)
class Step:
    """One forward pass: how many requests decode a token, and each prefill's chunk in queue
    order."""

    decodes: int
    chunks: tuple[int, ...]

    def secs(self, fixed_ms: float, decode_ms: float, prefill_tokens_per_sec: float) -> float:
        prefill = sum(self.chunks) / prefill_tokens_per_sec if prefill_tokens_per_sec else 0.0
        return (fixed_ms + decode_ms * self.decodes) / 1000 + prefill


def plan_step(budget: int, decodes: int, prefills: Sequence[int]) -> Step:
    """The step vLLM's scheduler would run: decodes first (one token each), then the queued
    prefills' remaining tokens in order, chunked at the budget."""
    left = max(0, budget - decodes)
    chunks: list[int] = []
    for remaining in prefills:
        if left <= 0:
            break
        chunks.append(min(remaining, left))
        left -= chunks[-1]
    return Step(decodes, tuple(chunks))


@dataclass(slots=True)
class _Prefill:
    remaining: int
    done: asyncio.Future[float]
    started: float | None = None  # the clock when its first chunk was scheduled


class StepScheduler:
    """Runs steps while any request needs one; requests await their prefill or next token.

    The step loop is a task started on demand and ending when nothing is queued, so an idle
    engine costs nothing and no task outlives its work.
    """

    def __init__(self, budget: int, fixed_ms: float, decode_ms: float,
                 prefill_tokens_per_sec: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """`clock`: the engine's (virtual in a replay)."""
        self._clock = clock
        self._budget = budget
        self._cost = (fixed_ms, decode_ms, prefill_tokens_per_sec)
        self._prefills: deque[_Prefill] = deque()
        self._decodes: list[asyncio.Future[None]] = []
        self._task: asyncio.Task[None] | None = None

    @property
    def unstarted(self) -> int:
        """Prefills not yet given a chunk: what vLLM counts as waiting."""
        return sum(1 for p in self._prefills if p.started is None and not p.done.done())

    async def prefill(self, tokens: int) -> float:
        """Wait until `tokens` uncached prompt tokens are computed and the first token sampled;
        returns the seconds from the first chunk scheduled to then (vLLM's prefill time)."""
        done: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._prefills.append(_Prefill(max(1, tokens), done))
        self._wake()
        return await done

    async def decode(self) -> None:
        """Wait for the next step, which produces this request's next token."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._decodes.append(done)
        self._wake()
        await done

    def _wake(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            # Requests whose client went away leave the batch, as an aborted request does.
            self._prefills = deque(p for p in self._prefills if not p.done.done())
            decodes = [f for f in self._decodes if not f.done()]
            self._decodes = []
            if not (self._prefills or decodes):
                return
            step = plan_step(self._budget, len(decodes), [p.remaining for p in self._prefills])
            now = self._clock()
            for prefill, chunk in zip(self._prefills, step.chunks, strict=False):
                prefill.started = now if prefill.started is None else prefill.started
                prefill.remaining -= chunk
            secs = step.secs(*self._cost)
            await asyncio.sleep(secs)
            for future in decodes:
                if not future.done():
                    future.set_result(None)
            ended = self._clock()
            while self._prefills and self._prefills[0].remaining <= 0:
                finished = self._prefills.popleft()
                if not finished.done.done():
                    finished.done.set_result(ended - (finished.started or ended))
