"""On-demand LoRA loading (picker.fleet.lora_loading) against simulated vLLM engines over real
HTTP: which engine is asked, how often, and what a refusal does."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator

import pytest

from picker.errors import AdapterLoadFailed
from picker.fleet.engine_load import EngineLoad, LoraLoad
from picker.fleet.lora_loading import AdapterLoader, LoraSettings
from picker.fleet.manager import WorkerManager
from picker.fleet.served_models import DiscoverySettings
from picker.fleet.worker_spec import WorkerSpec
from picker.routing.request import Api, RoutingRequest
from picker_bench.loopback import loopback
from tests.live import Fleet
from tests.sim_thread import running_sim


@pytest.fixture
def sims() -> Iterator[list[str]]:
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(running_sim(worker_id=f"w{i}", max_loras=2,
                                               runtime_lora_updating=True))
               for i in range(3)]


def fleet(urls: list[str], *loras: LoraLoad) -> tuple[Fleet, WorkerManager]:
    workers = Fleet(WorkerSpec(url=url, id=f"w{i}", models=["m"])
                    for i, url in enumerate(urls))
    for worker, lora in zip(workers, loras, strict=False):
        workers.set_engine(worker, EngineLoad(scraped_at=time.monotonic(), lora=lora))
    return workers, WorkerManager(workers.registry, DiscoverySettings())


def loader(workers: Fleet, manager: WorkerManager, path: str = "/adapters/sql",
           **settings: object) -> AdapterLoader:
    return AdapterLoader(workers.registry, LoraSettings.model_validate({
        "load_on_demand": True, "adapters": {"sql": {"base_model": "m", "path": path}},
        **settings}), manager.served_adapter)


def calls(url: str) -> int:
    return int(loopback().get(f"{url}/sim/stats").json()["lora_load_calls"])


SQL = RoutingRequest(model="sql", api=Api.CHAT)
FULL = LoraLoad(frozenset({"x", "y"}), frozenset({"x", "y"}), 2)
FREE = LoraLoad(frozenset({"x"}), frozenset({"x"}), 2)


async def test_loads_once_on_an_engine_with_a_free_place_then_it_serves_the_adapter(
        sims: list[str]) -> None:
    workers, manager = fleet(sims, FULL, FREE, FULL)
    loading = loader(workers, manager)
    await asyncio.gather(*(loading.ensure(SQL) for _ in range(5)))  # one load for all five
    await loading.ensure(SQL)  # served now: nothing to load
    assert [calls(url) for url in sims] == [0, 1, 0]
    assert [w.id for w in workers.registry.for_model("sql")] == ["w1"]
    assert workers[1].spec.adapters == {"sql": "m"}
    assert loopback().post(f"{sims[1]}/v1/completions",
                           json={"model": "sql", "prompt": "a"}).status_code == 200


async def test_refusals_try_the_next_engine_up_to_max_attempts_then_fail(
        sims: list[str]) -> None:
    workers, manager = fleet(sims)
    loading = loader(workers, manager, path="/missing/sql", max_attempts=2)
    with pytest.raises(AdapterLoadFailed, match="No adapter found for /missing/sql") as caught:
        await loading.ensure(SQL)
    assert caught.value.status == 503
    assert sum(calls(url) for url in sims) == 2
    assert workers.registry.for_model("sql") == ()


async def test_an_engine_that_already_has_it_counts_as_loaded(sims: list[str]) -> None:
    loopback().post(f"{sims[0]}/v1/load_lora_adapter",
                    json={"lora_name": "sql", "lora_path": "/adapters/sql"})
    workers, manager = fleet(sims[:1])
    await loader(workers, manager).ensure(SQL)
    assert calls(sims[0]) == 2 and workers[0].spec.adapters == {"sql": "m"}


async def test_off_by_default_and_for_models_not_declared(sims: list[str]) -> None:
    workers, manager = fleet(sims)
    off = AdapterLoader(workers.registry, LoraSettings.model_validate(
        {"adapters": {"sql": {"base_model": "m", "path": "/a"}}}), manager.served_adapter)
    assert not off.enabled
    await off.ensure(SQL)
    await loader(workers, manager).ensure(RoutingRequest(model="other", api=Api.CHAT))
    assert sum(calls(url) for url in sims) == 0
