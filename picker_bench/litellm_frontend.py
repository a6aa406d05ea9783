"""LiteLLM contenders for `bench routing --frontend litellm`: its own strategies vs the picker.

Everything runs inside this process, as the LiteLLM SDK does: the Router calls the engines over
HTTP, the workload's timing is measured around `router.acompletion`.
"""

from __future__ import annotations

import asyncio
import os
import random
import statistics
import time
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no network for the cost map

from litellm.router import Router as LiteLLMRouter  # noqa: E402

from litellm_plugin import PickerStrategy  # noqa: E402
from litellm_plugin.tracking import LEASE_KEY, InFlightTracker  # noqa: E402
from picker.routing.outcome import Outcome  # noqa: E402
from picker_bench.workload import Driver, Served, Workload  # noqa: E402

__all__ = ["litellm_driver", "selection_overhead"]

MODEL_GROUP = "sim-model"


def _router(strategy: str, engine_urls: list[str]) -> LiteLLMRouter:
    model_list = [{"model_name": MODEL_GROUP, "litellm_params": {
        "model": "hosted_vllm/sim-model", "api_base": f"{url}/v1", "api_key": "unused"}}
        for url in engine_urls]
    if strategy in ("simple-shuffle", "least-busy"):
        return LiteLLMRouter(model_list=model_list, routing_strategy=strategy)  # type: ignore[arg-type]
    router = LiteLLMRouter(model_list=model_list)
    PickerStrategy.attach(router, policy=strategy, prefix={"enabled": True})
    return router


async def _one(router: LiteLLMRouter, body: dict[str, Any]) -> Served:
    started = time.perf_counter()
    ttft = 0.0
    try:
        stream = await router.acompletion(model=MODEL_GROUP, messages=body["messages"],
                                          max_tokens=body["max_tokens"], stream=True)
        async for chunk in stream:
            if not ttft and chunk.choices and chunk.choices[0].delta.content:
                ttft = time.perf_counter() - started
        status = 200
    except Exception:  # noqa: BLE001 - a benchmark counts failures, whatever their type
        status = 500
    e2e = time.perf_counter() - started
    return Served("-", status, ttft or e2e, e2e)


def litellm_driver(strategy: str, engine_urls: list[str]) -> Driver:
    router = _router(strategy, engine_urls)

    async def drive(workload: Workload) -> tuple[list[Served], float]:
        started = time.perf_counter()

        async def scheduled(at: float, body: dict[str, Any]) -> Served:
            await asyncio.sleep(max(0.0, at - (time.perf_counter() - started)))
            return await _one(router, body)

        outcomes = await asyncio.gather(*(scheduled(at, body) for at, body in
                                          zip(workload.arrivals, workload.bodies, strict=True)))
        return list(outcomes), time.perf_counter() - started

    return drive


def selection_overhead(strategy: str, deployments: int = 8, prompt_chars: int = 8192,
                       picks: int = 2000) -> tuple[float, float]:
    """(p50, p99) us of LiteLLM's deployment selection, no HTTP: the router's own cost."""
    urls = [f"http://10.0.0.{i}:8000" for i in range(deployments)]
    router = _router(strategy, urls)
    rng = random.Random(0)
    systems = ["".join(rng.choices("abcdefghij ", k=prompt_chars)) for _ in range(16)]

    async def measure() -> list[float]:
        timings = []
        for i in range(picks):
            messages = [{"role": "system", "content": systems[i % 16]},
                        {"role": "user", "content": f"q{i}"}]
            kwargs: dict[str, Any] = {"metadata": {}}
            begun = time.perf_counter()
            await router.async_get_available_deployment(
                model=MODEL_GROUP, messages=messages, request_kwargs=kwargs)
            timings.append(time.perf_counter() - begun)
            # Release the slot the picker took, as LiteLLM's success hook would.
            InFlightTracker.installed().end(kwargs["metadata"].get(LEASE_KEY),
                                            Outcome.COMPLETED)
        return timings

    timings = asyncio.run(measure())
    cuts = statistics.quantiles(timings, n=100)
    return cuts[49] * 1e6, cuts[98] * 1e6
