"""The simulator's vLLM-style step scheduler: one token budget per step, prefills contend."""

from __future__ import annotations

import asyncio
import time

import pytest

from picker_sim.engine import SimConfig, SimEngine
from picker_sim.scheduler import Step, StepScheduler, plan_step


@pytest.mark.parametrize(("budget", "decodes", "prefills", "chunks"), [
    (8192, 0, [1000], (1000,)),  # one prefill fits
    (8192, 0, [1000, 1000], (1000, 1000)),  # two share the step
    (8192, 4, [8190], (8188,)),  # decodes first, the prefill gets what is left
    (1000, 0, [600, 600, 600], (600, 400)),  # chunked at the budget, the third waits
    (512, 10, [], ()),  # decode-only step
    (4, 10, [100], ()),  # decodes use the whole budget: no prefill this step
])
def test_plan_step_shares_the_budget_decodes_first(
        budget: int, decodes: int, prefills: list[int], chunks: tuple[int, ...]) -> None:
    assert plan_step(budget, decodes, prefills) == Step(decodes, chunks)


def test_step_time_grows_with_its_tokens() -> None:
    assert Step(0, ()).secs(6.0, 0.1, 20_000) == pytest.approx(0.006)
    assert Step(10, ()).secs(6.0, 0.1, 20_000) == pytest.approx(0.007)
    assert Step(10, (2000,)).secs(6.0, 0.1, 20_000) == pytest.approx(0.107)
    assert Step(0, (2000,)).secs(6.0, 0.0, 0.0) == pytest.approx(0.006)  # prefill for free


async def _prefill_secs(budget: int, prompts: list[int]) -> list[float]:
    """Seconds from submission to first token of prompts submitted together."""
    scheduler = StepScheduler(budget, fixed_ms=0.0, decode_ms=0.0, prefill_tokens_per_sec=20_000)
    started = time.monotonic()

    async def one(tokens: int) -> float:
        await scheduler.prefill(tokens)
        return time.monotonic() - started

    return list(await asyncio.gather(*(one(t) for t in prompts)))


@pytest.mark.xdist_group("timing")  # bounds a wall-clock time: tests/conftest.py
@pytest.mark.parametrize(("budget", "prompts", "expected"), [
    # 2,000 tokens at 20k/s: 100 ms alone.
    (8192, [2000], [0.1]),
    # Two in one step: both first tokens after the step that computes 4,000 tokens (~2x).
    (8192, [2000, 2000], [0.2, 0.2]),
    # A budget smaller than both: first come, first finished; the second still ends at ~2x.
    (1024, [2000, 2000], [0.1, 0.2]),
])
async def test_concurrent_prefills_take_about_twice_as_long(
        budget: int, prompts: list[int], expected: list[float]) -> None:
    measured = await _prefill_secs(budget, prompts)
    for got, want in zip(measured, expected, strict=True):
        assert want * 0.9 <= got <= want * 1.6, (measured, expected)


@pytest.mark.xdist_group("timing")  # bounds a wall-clock time: tests/conftest.py
async def test_a_decode_step_beside_a_prefill_chunk_is_slower() -> None:
    scheduler = StepScheduler(8192, fixed_ms=5.0, decode_ms=0.0, prefill_tokens_per_sec=20_000)
    started = time.monotonic()
    await scheduler.decode()
    alone = time.monotonic() - started
    # Let the decode join a step that also computes a 2,000-token prefill (100 ms).
    prefill = asyncio.ensure_future(scheduler.prefill(2000))
    await asyncio.sleep(0)
    started = time.monotonic()
    await scheduler.decode()
    beside = time.monotonic() - started
    await prefill
    # The step alone is 5 ms; a loaded machine stretched it to 45 ms once (against a 30 ms
    # bound), so it is compared with the step beside the prefill, which must take the
    # prefill's 100 ms.
    assert beside >= 0.1 and alone < beside / 2, (alone, beside)


@pytest.mark.xdist_group("timing")  # bounds a wall-clock time: tests/conftest.py
async def test_a_cancelled_prefill_leaves_the_queue() -> None:
    scheduler = StepScheduler(1000, fixed_ms=0.0, decode_ms=0.0, prefill_tokens_per_sec=20_000)
    gone = asyncio.ensure_future(scheduler.prefill(20_000))  # 1 s if it stayed
    await asyncio.sleep(0.01)
    assert scheduler.unstarted == 0  # it has its first chunk
    gone.cancel()
    started = time.monotonic()
    await scheduler.prefill(1000)
    assert time.monotonic() - started < 0.3


async def test_engine_reports_unscheduled_prefills_as_waiting() -> None:
    engine = SimEngine(SimConfig(ttft_ms=0, tpot_ms=0, prefill_tokens_per_sec=20_000,
                                 max_batched_tokens=2000, max_concurrency=8))

    async def request(word: str) -> None:
        async with engine.admitted([word] * 2000) as run:
            await run.first_token()

    tasks = [asyncio.ensure_future(request(w)) for w in ("a", "b", "c")]
    await asyncio.sleep(0.02)
    # One prefill fills the budget; the other two have no chunk yet.
    assert (engine.requests_running(), engine.requests_waiting()) == (1, 2)
    await asyncio.gather(*tasks)
    assert (engine.requests_running(), engine.requests_waiting()) == (0, 0)
    assert engine.prefill_tokens_total == 6000


def test_contention_is_off_unless_configured() -> None:
    assert SimEngine(SimConfig()).scheduler is None
    assert SimEngine(SimConfig.from_profile("8b-h100-batched")).scheduler is not None
    assert SimEngine(SimConfig.from_profile("8b-h100-like")).scheduler is None
    with pytest.raises(ValueError, match="max_batched_tokens"):
        SimConfig(max_batched_tokens=-1)
