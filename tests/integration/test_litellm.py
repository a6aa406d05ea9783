"""The picker as a strategy of the real litellm.Router, sending real HTTP to simulated engines."""

from __future__ import annotations

import os

os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"  # before litellm is imported: no network

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import litellm
import pytest

from examples.litellm.sdk import make_router
from litellm_plugin import PickerStrategy
from picker_bench.loopback import loopback
from picker_bench.stack import Process, SimSpec, start_sims

MESSAGES = [{"role": "user", "content": "hello"}]


@pytest.fixture
def engines(tmp_path: Path) -> Iterator[tuple[list[str], dict[str, Process]]]:
    specs = [SimSpec(f"e{i}", "my-model", ["--ttft-ms", "2", "--tpot-ms", "2"])
             for i in range(3)]
    procs = {s.worker_id: p for s, p in zip(specs, start_sims(specs, tmp_path), strict=True)}
    yield [f"http://127.0.0.1:{s.port}/v1" for s in specs], procs
    for proc in procs.values():
        proc.stop()


@pytest.fixture(autouse=True)
def detach_strategies(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every strategy a test attaches runs a picker runtime on a thread: stop it after."""
    attached: list[PickerStrategy] = []
    attach = PickerStrategy.attach

    def recording(*args: Any, **kwargs: Any) -> PickerStrategy:
        strategy = attach(*args, **kwargs)
        attached.append(strategy)
        return strategy

    monkeypatch.setattr(PickerStrategy, "attach", recording)
    yield
    for strategy in attached:
        strategy.detach()


def served(response: object) -> str:
    return str(response._hidden_params["api_base"])  # type: ignore[attr-defined]


def strategy_of(router: litellm.Router) -> PickerStrategy:
    strategy = router.async_get_available_deployment.__self__
    assert isinstance(strategy, PickerStrategy)
    return strategy


async def wait_idle(strategy: PickerStrategy) -> None:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if all(w.in_flight == 0 for w in strategy.runtime.registry.workers()):
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"in-flight did not return to zero: "
                         f"{[(w.id, w.in_flight) for w in strategy.runtime.registry.workers()]}")


def test_round_robin_spreads_evenly_sync_and_async(engines: tuple[list[str], dict]) -> None:
    bases, _ = engines
    router = make_router(bases, policy="round_robin")
    counts = Counter(served(router.completion(model="my-model", messages=MESSAGES,
                                              max_tokens=2)) for _ in range(6))

    async def more() -> Counter[str]:
        return Counter([served(await router.acompletion(model="my-model", messages=MESSAGES,
                                                         max_tokens=2)) for _ in range(6)])

    counts += asyncio.run(more())
    assert sorted(counts.values()) == [4, 4, 4] and len(counts) == 3


def test_least_load_spreads_concurrent_calls(engines: tuple[list[str], dict]) -> None:
    bases, _ = engines
    router = make_router(bases, policy="least_load")

    async def burst() -> Counter[str]:
        replies = await asyncio.gather(*(router.acompletion(
            model="my-model", messages=MESSAGES, max_tokens=20) for _ in range(9)))
        return Counter(served(r) for r in replies)

    assert sorted(asyncio.run(burst()).values()) == [3, 3, 3]


def test_prefix_routing_keeps_a_shared_prefix_group_on_one_engine(
        engines: tuple[list[str], dict]) -> None:
    bases, _ = engines
    router = make_router(bases, policy="prefix_cache")
    homes: dict[int, set[str]] = {0: set(), 1: set(), 2: set()}
    for i in range(12):
        group = i % 3
        system = f"group {group}: " + "shared instructions " * 60
        reply = router.completion(model="my-model", max_tokens=1, messages=[
            {"role": "system", "content": system}, {"role": "user", "content": f"q{i}"}])
        homes[group].add(served(reply))
    assert all(len(h) == 1 for h in homes.values()), homes


def test_a_reply_message_object_fed_back_into_the_conversation_is_routed(
        engines: tuple[list[str], dict]) -> None:
    """Multi-turn clients append LiteLLM's own pydantic `Message` to the next call's messages."""
    bases, _ = engines
    router = make_router(bases, policy="prefix_cache")
    history: list[object] = [{"role": "user", "content": "shared question " * 50}]
    first = router.completion(model="my-model", max_tokens=2, messages=history)
    reply = first.choices[0].message  # type: ignore[union-attr]
    assert not isinstance(reply, dict)
    history += [reply, {"role": "user", "content": "and then?"}]
    second = router.completion(model="my-model", max_tokens=2, messages=history)
    assert served(second) == served(first)  # the conversation's prefix stays on its engine


def test_dead_engine_is_cooled_down_and_no_longer_chosen(
        engines: tuple[list[str], dict]) -> None:
    bases, procs = engines
    router = make_router(bases, policy="round_robin")
    router.allowed_fails = 0
    router.cooldown_time = 60
    procs["e1"].kill()
    dead = bases[1]

    async def calls() -> list[str]:
        out = []
        for _ in range(9):
            try:
                out.append(served(await router.acompletion(
                    model="my-model", messages=MESSAGES, max_tokens=2, num_retries=0)))
            except (litellm.APIConnectionError, litellm.InternalServerError):
                out.append("failed")
        return out

    async def calls_then_idle() -> list[str]:
        results = await calls()
        await wait_idle(strategy_of(router))  # LiteLLM's success hooks run on this loop
        return results

    results = asyncio.run(calls_then_idle())
    assert results.count("failed") == 1  # the one call that found it dead
    assert dead not in results


def test_in_flight_returns_to_zero_after_streams_and_failures(
        engines: tuple[list[str], dict]) -> None:
    bases, procs = engines
    router = make_router(bases, policy="least_load")
    strategy = strategy_of(router)

    async def mixed() -> None:
        for _ in range(3):
            stream = await router.acompletion(model="my-model", messages=MESSAGES,
                                              max_tokens=5, stream=True)
            async for _chunk in stream:
                pass
        procs["e2"].kill()
        # Six calls at least, and more until one has met the dead engine: least_load breaks
        # ties at random, so six idle-engine calls all miss it one time in 11 ((2/3)^6).
        failed = False
        for sent in range(1, 31):
            try:
                await router.acompletion(model="my-model", messages=MESSAGES, max_tokens=2,
                                         num_retries=0)
            except (litellm.APIConnectionError, litellm.InternalServerError):
                failed = True
            if sent >= 6 and failed:
                break
        await wait_idle(strategy)

    asyncio.run(mixed())
    text = strategy.runtime.metrics.render().decode()
    assert 'llm_picker_requests_total{outcome="upstream_error"}' in text


def test_what_litellm_reports_of_each_answer_checks_and_teaches_the_predictions(
        engines: tuple[list[str], dict]) -> None:
    """LiteLLM reports each answer (its success callback) instead of passing it by: its usage
    reaches the prediction audit, and a stream's first token the engine's latency model."""
    bases, _ = engines
    router = make_router(bases[:1])  # prefix_cache: each decision predicts a hit
    strategy = strategy_of(router)

    async def calls() -> None:
        for _ in range(3):
            await router.acompletion(model="my-model", messages=MESSAGES, max_tokens=2)
            stream = await router.acompletion(model="my-model", messages=MESSAGES,
                                              max_tokens=5, stream=True)
            async for _chunk in stream:
                pass
        await wait_idle(strategy)

    asyncio.run(calls())
    [worker] = strategy.runtime.registry.workers()
    deadline = time.monotonic() + 5  # the success callback may land after the slot's count
    while worker.latency.samples < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert worker.latency.samples == 3  # the streams' first tokens
    assert strategy.runtime.audit.view()[worker.id]["samples"] >= 3  # usage's cached tokens


def test_picker_metrics_on_its_admin_port_when_enabled(engines: tuple[list[str], dict]) -> None:
    from picker_bench.stack import free_port

    bases, _ = engines
    router = litellm.Router(model_list=[{"model_name": "my-model", "litellm_params": {
        "model": "hosted_vllm/my-model", "api_base": base, "api_key": "x"}} for base in bases])
    port = free_port()
    PickerStrategy.attach(router, policy="least_load", admin={"enabled": True, "port": port})
    router.completion(model="my-model", messages=MESSAGES, max_tokens=2)
    text = loopback().get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    assert 'llm_picker_decisions_total{policy="least_load"' in text
    listed = loopback().get(f"http://127.0.0.1:{port}/workers", timeout=5).json()
    assert listed["total"] == 3


def test_the_explain_line_lands_in_the_calls_metadata_only_when_allowed_and_asked(
        engines: tuple[list[str], dict]) -> None:
    """The SDK has no response headers: the line the proxy sends as x-llm-picker-explain is left
    in the metadata dict the caller passed, under "llm_picker_explain"."""
    bases, _ = engines
    router = litellm.Router(model_list=[{"model_name": "my-model", "litellm_params": {
        "model": "hosted_vllm/my-model", "api_base": base, "api_key": "x"}} for base in bases])
    PickerStrategy.attach(router, policy="least_load",
                          explain={"enabled": True, "allow_header": True})
    asked = {"headers": {"x-llm-picker-explain": "1"}}
    response = router.completion(model="my-model", messages=MESSAGES, max_tokens=2,
                                 metadata=asked)
    line = asked["llm_picker_explain"]
    assert line.startswith("policy=least_load; worker=") and "reason=" in line
    # No model_info.id was given: the worker goes by the engine's address, not LiteLLM's hash.
    served = response._hidden_params["api_base"]  # type: ignore[attr-defined]
    assert f"worker={urlsplit(served).netloc};" in line
    plain: dict[str, Any] = {}
    asyncio.run(router.acompletion(model="my-model", messages=MESSAGES, max_tokens=2,
                                   metadata=plain))
    assert "llm_picker_explain" not in plain
    asked_async = {"headers": {"x-llm-picker-explain": "1"}}
    asyncio.run(router.acompletion(model="my-model", messages=MESSAGES, max_tokens=2,
                                   metadata=asked_async))
    assert asked_async["llm_picker_explain"].startswith("policy=least_load; worker=")
    strategy_of(router).detach()
    PickerStrategy.attach(router, policy="least_load", explain={"enabled": True})
    not_allowed = {"headers": {"x-llm-picker-explain": "1"}}
    router.completion(model="my-model", messages=MESSAGES, max_tokens=2, metadata=not_allowed)
    assert "llm_picker_explain" not in not_allowed  # allow_header is off


def test_concurrent_calls_sharing_one_metadata_dict_keep_their_own_leases(
        engines: tuple[list[str], dict]) -> None:
    """LiteLLM hands a caller's metadata dict on by reference: a lease token kept in it would
    be every concurrent call's, each ending the others' leases as failed retries until the
    engines' circuits open."""
    bases, _ = engines
    router = make_router(bases, policy="least_load")
    strategy = strategy_of(router)
    shared: dict[str, Any] = {"app": "demo"}
    seen_in_flight: list[int] = []

    async def burst() -> list[object]:
        async def one() -> object:
            return await router.acompletion(model="my-model", messages=MESSAGES, max_tokens=20,
                                            metadata=shared)

        calls = [asyncio.ensure_future(one()) for _ in range(12)]
        await asyncio.sleep(0.05)
        seen_in_flight.append(sum(w.in_flight for w in strategy.runtime.registry.workers()))
        results = await asyncio.gather(*calls, return_exceptions=True)
        await wait_idle(strategy)
        return results

    results = asyncio.run(burst())
    assert not [r for r in results if isinstance(r, BaseException)]
    assert seen_in_flight[0] > 1  # every call holds its own slot
    assert all(w.circuit.state.value == "closed" for w in strategy.runtime.registry.workers())
    assert "llm_picker_lease" not in shared


def test_anthropic_messages_release_their_slot(
        engines: tuple[list[str], dict]) -> None:
    """/v1/messages has a `metadata` field of its own: LiteLLM keeps its metadata under
    `litellm_metadata` there, and the lease token must ride in that, not in the request."""
    bases, _ = engines
    router = make_router(bases, policy="least_load")
    strategy = strategy_of(router)

    async def calls() -> None:
        for _ in range(3):
            await router.aanthropic_messages(model="my-model", max_tokens=5,
                                             messages=[{"role": "user", "content": "hi"}])
        await wait_idle(strategy)

    asyncio.run(calls())
    assert strategy.tracker.open_calls == 0


def test_a_deployment_moved_to_another_engine_is_followed(
        engines: tuple[list[str], dict]) -> None:
    """Same deployment id, new api_base (Router.upsert_deployment, the proxy's /model/update):
    the picker's worker must move too, or it health-checks and scrapes the old engine."""
    from litellm.types.router import Deployment

    bases, _ = engines
    router = make_router(bases[:2], policy="round_robin")
    moved = router.model_list[1]
    router.upsert_deployment(Deployment(model_name="my-model", litellm_params={
        "model": "hosted_vllm/my-model", "api_base": bases[2], "api_key": "x"},
        model_info={"id": moved["model_info"]["id"]}))
    served_by = {served(router.completion(model="my-model", messages=MESSAGES, max_tokens=1))
                 for _ in range(4)}
    assert served_by == {bases[0], bases[2]}
    urls = {w.url for w in strategy_of(router).runtime.registry.workers()}
    assert urls == {base.removesuffix("/v1") for base in (bases[0], bases[2])}


def test_detach_gives_the_router_back_its_own_routing(engines: tuple[list[str], dict]) -> None:
    bases, _ = engines
    router = make_router(bases, policy="least_load")
    strategy = strategy_of(router)
    stream = router.completion(model="my-model", messages=MESSAGES, max_tokens=50, stream=True)
    next(iter(stream))  # an abandoned stream: LiteLLM never reports its end
    assert strategy.tracker.open_calls >= 1
    strategy.detach()
    assert "get_available_deployment" not in router.__dict__
    assert "async_get_available_deployment" not in router.__dict__
    assert not [w for w in strategy.runtime.registry.workers() if w.in_flight]
    response = router.completion(model="my-model", messages=MESSAGES, max_tokens=1)
    assert served(response) in bases  # LiteLLM's own strategy, the stopped picker unasked


def test_deployments_added_and_deleted_at_runtime_are_followed(
        engines: tuple[list[str], dict]) -> None:
    from litellm.types.router import Deployment

    bases, _ = engines
    router = make_router(bases[:2], policy="round_robin")
    first = Counter(served(router.completion(model="my-model", messages=MESSAGES, max_tokens=1))
                    for _ in range(4))
    assert set(first) == set(bases[:2])
    router.add_deployment(Deployment(model_name="my-model", litellm_params={
        "model": "hosted_vllm/my-model", "api_base": bases[2], "api_key": "x"},
        model_info={"id": "added"}))
    router.delete_deployment(id=router.model_list[0]["model_info"]["id"])
    later = Counter(served(router.completion(model="my-model", messages=MESSAGES, max_tokens=1))
                    for _ in range(4))
    assert set(later) == {bases[1], bases[2]}
    assert len(strategy_of(router).runtime.registry.workers()) == 2


def test_lora_affinity_keeps_a_new_adapter_off_engines_at_max_lora(tmp_path: Path) -> None:
    """Deployments of adapter "new" (model_info.base_model: my-model) on three engines; e0 and
    e1 have both adapter places taken by x and y: every call goes to e2. On-demand loading has
    no LiteLLM counterpart: LiteLLM routes a model group only to its listed deployments."""
    import contextlib

    import httpx

    specs = [SimSpec(f"e{i}", "my-model", ["--ttft-ms", "2", "--tpot-ms", "5", "--max-loras",
                                           "2", "--lora-modules", "x", "y", "new"])
             for i in range(3)]
    procs = start_sims(specs, tmp_path)
    bases = [f"http://127.0.0.1:{s.port}" for s in specs]
    try:
        router = litellm.Router(model_list=[
            {"model_name": name, "litellm_params": {"model": f"hosted_vllm/{name}",
                                                    "api_base": f"{base}/v1", "api_key": "x"},
             "model_info": {"id": f"{name}-{i}", **info}}
            for i, base in enumerate(bases)
            for name, info in (("my-model", {}), ("new", {"base_model": "my-model"}))])
        strategy = PickerStrategy.attach(router, policy="lora_affinity",
                                         load={"interval_secs": 0.05})
        with contextlib.ExitStack() as stack:
            client = stack.enter_context(httpx.Client(timeout=30))
            streams = []  # held open: a collected line iterator closes its response
            for base in bases[:2]:
                for adapter in ("x", "y"):
                    response = stack.enter_context(client.stream(
                        "POST", f"{base}/v1/completions", json={
                            "model": adapter, "prompt": "long", "max_tokens": 3000,
                            "stream": True}))
                    streams.append(response.iter_lines())
                    next(streams[-1])

            def full(worker_id: str) -> bool:
                worker = strategy.runtime.registry.get(worker_id)
                lora = None if worker is None or worker.engine is None else worker.engine.lora
                return lora is not None and lora.running == {"x", "y"}

            deadline = time.monotonic() + 5
            while not (full("my-model-0") and full("my-model-1")):
                assert time.monotonic() < deadline, "the picker never saw e0 and e1 full"
                time.sleep(0.05)
            counts = Counter(served(router.completion(model="new", messages=MESSAGES,
                                                      max_tokens=2)) for _ in range(9))
        assert counts == {f"{bases[2]}/v1": 9}, counts
    finally:
        for proc in procs:
            proc.stop()


async def _engine_of_each_call(bases: list[str], call: Any, count: int) -> list[str]:
    """Which engine served each of `count` calls, from the engines' own request counts (an
    Anthropic or rerank reply from LiteLLM does not say which api_base served it)."""
    import httpx

    async with httpx.AsyncClient(timeout=5) as client:
        async def totals() -> dict[str, int]:
            return {base: (await client.get(base.removesuffix("/v1") + "/sim/stats"))
                    .json()["requests_total"] for base in bases}

        served_by: list[str] = []
        for i in range(count):
            before = await totals()
            await call(i)
            after = await totals()
            [base] = [b for b in bases if after[b] > before[b]]
            served_by.append(base)
    return served_by


def test_anthropic_system_prompts_and_rerank_queries_keep_their_engine(
        engines: tuple[list[str], dict]) -> None:
    """Router.aanthropic_messages passes `system` beside the messages, Router.arerank the
    query: the picker reads them as ext_proc does, so calls sharing one share an engine."""
    bases, _ = engines
    router = make_router(bases, policy="prefix_cache")

    async def anthropic(i: int) -> None:
        system = f"group {i % 2}: " + "shared instructions " * 60
        await router.aanthropic_messages(model="my-model", max_tokens=1, system=system,
                                         messages=[{"role": "user", "content": f"q{i}"}])

    async def rerank(i: int) -> None:
        await router.arerank(model="my-model", query=f"query {i % 2} " + "topic " * 60,
                             documents=["a b", f"doc {i}"])

    async def run() -> dict[str, list[str]]:
        served_by = {call.__name__: await _engine_of_each_call(bases, call, 8)
                     for call in (anthropic, rerank)}
        await wait_idle(strategy_of(router))
        return served_by

    for name, served_by in asyncio.run(run()).items():
        homes: dict[int, set[str]] = {0: set(), 1: set()}
        for i, base in enumerate(served_by):
            homes[i % 2].add(base)
        assert all(len(h) == 1 for h in homes.values()), (name, homes)


def test_an_overflow_deployment_takes_calls_only_while_the_others_are_saturated(
        engines: tuple[list[str], dict]) -> None:
    """`model_info: {llm_picker_overflow: true}`: with per_worker_max 1 and two regular
    engines, two concurrent calls fill them and a third spills; calls one at a time never
    do."""
    bases, _ = engines
    router = litellm.Router(model_list=[
        {"model_name": "my-model", "model_info": {"id": f"d{i}", **(
            {"llm_picker_overflow": True} if i == 2 else {})},
         "litellm_params": {"model": "hosted_vllm/my-model", "api_base": base, "api_key": "x"}}
        for i, base in enumerate(bases)])
    PickerStrategy.attach(router, policy="least_load", limits={"per_worker_max": 1})
    strategy = strategy_of(router)

    async def burst(n: int) -> list[str]:
        replies = await asyncio.gather(*(router.acompletion(
            model="my-model", messages=MESSAGES, max_tokens=30) for _ in range(n)))
        await wait_idle(strategy)
        return [served(r) for r in replies]

    async def run() -> tuple[list[str], list[str]]:
        alone = [(await burst(1))[0] for _ in range(4)]
        return alone, await burst(3)

    alone, together = asyncio.run(run())
    assert bases[2] not in alone
    assert sorted(together) == sorted(bases)
