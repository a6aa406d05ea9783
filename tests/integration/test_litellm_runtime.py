"""Inside LiteLLM the picker is the same running picker as under Envoy: engine metrics,
active health checks and lease expiry all run (real litellm.Router, real simulated engines)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import litellm
import pytest

from litellm_plugin import PickerStrategy
from picker.errors import ConfigError
from picker.fleet.registry import Worker
from picker.trace.line import parse_line
from picker_bench.loopback import loopback
from picker_bench.stack import Process, SimSpec, start_sims
from tests.waiting import wait_until

MESSAGES = [{"role": "user", "content": "hello"}]


@pytest.fixture
def sims(tmp_path: Path) -> Iterator[tuple[list[SimSpec], dict[str, Process]]]:
    specs = [SimSpec(f"e{i}", "sim-model", ["--ttft-ms", "2", "--tpot-ms", "20"])
             for i in range(3)]
    procs = {s.worker_id: p for s, p in zip(specs, start_sims(specs, tmp_path), strict=True)}
    yield specs, procs
    for proc in procs.values():
        proc.stop()


def base(spec: SimSpec) -> str:
    return f"http://127.0.0.1:{spec.port}/v1"


def control(spec: SimSpec, **knobs: object) -> None:
    loopback().post(f"http://127.0.0.1:{spec.port}/sim/control", json=knobs,
                    timeout=5).raise_for_status()


def attached(specs: list[SimSpec], **settings: Any) -> tuple[litellm.Router, PickerStrategy]:
    router = litellm.Router(model_list=[{"model_name": "my-model", "litellm_params": {
        "model": "hosted_vllm/sim-model", "api_base": base(s), "api_key": "x"}} for s in specs])
    return router, PickerStrategy.attach(router, **settings)


def worker_at(strategy: PickerStrategy, spec: SimSpec) -> Worker:
    (worker,) = [w for w in strategy.runtime.registry.workers()
                 if w.url == f"http://127.0.0.1:{spec.port}"]
    return worker


def served(response: object) -> str:
    return str(response._hidden_params["api_base"])  # type: ignore[attr-defined]


def test_least_queue_reads_the_engines_queues(
        sims: tuple[list[SimSpec], dict[str, Process]]) -> None:
    specs, _ = sims
    for spec, waiting in zip(specs, (12, 0, 7), strict=True):
        control(spec, extra_waiting=waiting)
    router, strategy = attached(specs, policy="least_queue", load={"interval_secs": 0.1})
    try:
        wait_until(lambda: all(w.engine is not None and w.engine.waiting is not None
                               for w in strategy.runtime.registry.workers()),
                   timeout=8.0, what="every engine's metrics scraped")
        picks = Counter(served(router.completion(model="my-model", messages=MESSAGES,
                                                 max_tokens=1)) for _ in range(6))
        assert picks == {base(specs[1]): 6}  # the engine with the short queue, every time
    finally:
        strategy.detach()


def test_a_dead_engine_is_ejected_before_any_call_fails(
        sims: tuple[list[SimSpec], dict[str, Process]]) -> None:
    specs, procs = sims
    router, strategy = attached(specs, policy="round_robin",
                                health={"interval_secs": 0.1, "timeout_secs": 0.5,
                                        "failure_threshold": 1})
    try:
        dead = worker_at(strategy, specs[0])
        wait_until(lambda: dead.last_health_check is not None, timeout=8.0,
                   what="health checks ran")
        procs["e0"].stop()
        wait_until(lambda: not dead.healthy, timeout=8.0,
                   what="the dead engine is marked unhealthy")
        picks = Counter(served(router.completion(model="my-model", messages=MESSAGES,
                                                 max_tokens=1, num_retries=0))
                        for _ in range(6))
        assert picks == {base(specs[1]): 3, base(specs[2]): 3}
    finally:
        strategy.detach()


def test_a_lease_whose_end_never_comes_is_released_after_the_timeout(
        sims: tuple[list[SimSpec], dict[str, Process]]) -> None:
    specs, _ = sims
    # 3 s: the first chunk took over 1 s on a loaded machine and the lease had already expired.
    router, strategy = attached(specs[:1], policy="least_load", limits={"timeout_secs": 3})
    worker = worker_at(strategy, specs[0])

    async def open_stream_and_abandon_it() -> None:
        stream = await router.acompletion(model="my-model", messages=MESSAGES,
                                          max_tokens=200, stream=True)  # 200 x 20 ms
        await stream.__anext__()
        assert worker.in_flight == 1
        started = time.monotonic()
        while worker.in_flight and time.monotonic() - started < 8:
            await asyncio.sleep(0.05)
        assert worker.in_flight == 0, "the abandoned call's slot was never released"
        assert time.monotonic() - started >= 0.5  # by the expiry, not by the stream's end

    try:
        asyncio.run(open_stream_and_abandon_it())
        text = strategy.runtime.metrics.render().decode()
        assert 'llm_picker_requests_total{outcome="timeout"} 1.0' in text
    finally:
        strategy.detach()


def test_what_litellm_mode_cannot_run_is_refused_at_attach() -> None:
    router = litellm.Router(model_list=[{"model_name": "m", "litellm_params": {
        "model": "hosted_vllm/m", "api_base": "http://127.0.0.1:1/v1", "api_key": "x"}}])
    with pytest.raises(ConfigError) as caught:
        PickerStrategy.attach(router, workers=[{"url": "127.0.0.1:2"}])
    assert caught.value.key == "workers"
    with pytest.raises(ConfigError) as caught:
        PickerStrategy.attach(router, policy={"name": "weighted",
                                              "params": {"scorerz": {"queue": 1}}})
    assert caught.value.key == "policy.params.scorerz"


def test_calls_through_litellm_are_recorded_without_their_text(
        sims: tuple[list[SimSpec], dict[str, Process]], tmp_path: Path) -> None:
    """`trace:` inside LiteLLM: a line per call, its worker one of the deployments."""
    specs, _ = sims
    trace = tmp_path / "trace.jsonl"
    router, strategy = attached(specs, policy="round_robin", trace={"path": str(trace)})
    try:
        for i in range(4):
            router.completion(model="my-model", max_tokens=2, messages=[
                {"role": "user", "content": f"the secret recipe number {i}"}])
        # LiteLLM reports a call's success after returning it: the lease ends then.
        wait_until(lambda: strategy.runtime.leases.active == 0, what="every call reported")
    finally:
        strategy.detach()
    lines = [parse_line(text, "trace") for text in trace.read_text().splitlines()]
    assert [line.outcome for line in lines] == ["completed"] * 4
    assert {line.worker for line in lines} == {w.id for w in strategy.runtime.registry.workers()}
    assert all(line.policy == "round_robin" and line.latency_ms for line in lines)
    assert "secret" not in trace.read_text()
