"""LoRA adapters through real Envoy to simulated vLLM engines serving them: adapter requests
reach engines holding the adapter, a new adapter lands where an adapter place is free and
never on an engine at max_lora, and an adapter no engine serves is loaded once on demand."""

from __future__ import annotations

import concurrent.futures
import contextlib
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest

from picker_bench.loopback import loopback
from picker_bench.stack import Fleet, SimSpec, local_fleet
from tests.integration.conftest import FAST_HEALTH, MODEL, SIM_HEADER, wait_until

ADAPTERS = {"a": ("sql", "x", "y", "new"), "b": ("sql", "x", "y", "new"),
            "c": ("x", "y", "new"), "d": ()}


def _sim(name: str) -> SimSpec:
    loaded = ADAPTERS[name]
    return SimSpec(name, MODEL, ["--ttft-ms", "2", "--tpot-ms", "5", "--max-loras", "2",
                                 "--allow-runtime-lora-updating",
                                 *(["--lora-modules", *loaded] if loaded else [])],
                   worker={"adapters": dict.fromkeys(loaded, MODEL)})


@pytest.fixture(scope="module", params=["BUFFERED", "FULL_DUPLEX_STREAMED"])
def fleet(request: pytest.FixtureRequest) -> Iterator[Fleet]:
    settings = {
        **FAST_HEALTH, "load": {"interval_secs": 0.05},
        "policies": {"weighted": {"scorers": {"lora": 1.0, "in_flight": 1.0}}},
        "lora": {"load_on_demand": True, "load_timeout_secs": 3, "max_attempts": 1,
                 "adapters": {"fin": {"base_model": MODEL, "path": "/adapters/fin"}}},
    }
    with local_fleet([_sim(n) for n in ADAPTERS], policy="lora_affinity",
                     body_mode=request.param, picker_settings=settings) as running:
        yield running


def ask(fleet: Fleet, model: str, strategy: str | None = None) -> str:
    headers = {"x-routing-strategy": strategy} if strategy else {}
    response = loopback().post(f"{fleet.envoy_url}/v1/chat/completions", headers=headers,
                               timeout=20, json={"model": model, "max_tokens": 2,
                                            "messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 200, response.text
    assert response.json()["model"] == model
    return response.headers[SIM_HEADER]


def lora_running(fleet: Fleet) -> dict[str, list[str]]:
    """What the picker last scraped: each worker's adapters with requests."""
    workers = loopback().get(f"{fleet.admin_url}/workers", timeout=5).json()["workers"]
    return {w["id"]: w["state"].get("engine", {}).get("lora", {}).get("running", [])
            for w in workers}


@contextlib.contextmanager
def busy(fleet: Fleet, placed: dict[str, tuple[str, ...]]) -> Iterator[None]:
    """Long streams straight to the engines (the picker does not see them, only the engines'
    metrics do), one per adapter named, held open until the block ends."""
    with contextlib.ExitStack() as stack:
        client = stack.enter_context(httpx.Client(timeout=30))
        streams = []  # held: a line iterator that is collected closes its response
        for sim, adapters in placed.items():
            for adapter in adapters:
                response = stack.enter_context(client.stream(
                    "POST", f"{fleet.sim_url(sim)}/v1/completions",
                    json={"model": adapter, "prompt": "long", "max_tokens": 3000,
                          "stream": True}))
                streams.append(response.iter_lines())
                next(streams[-1])  # generating: the adapter is in the batch
        yield


def test_adapter_requests_reach_only_engines_holding_the_adapter(fleet: Fleet) -> None:
    served = Counter(ask(fleet, "sql") for _ in range(16))
    assert set(served) <= {"a", "b"}, served


@pytest.mark.parametrize("strategy", [None, "weighted"])
def test_a_new_adapter_lands_where_a_place_is_free_never_on_a_full_engine(
        fleet: Fleet, strategy: str | None) -> None:
    """a and b have both their places taken by x and y; c has room. least_load would spread
    the new adapter over all three (the picker sees no in-flight request anywhere)."""
    with busy(fleet, {"a": ("x", "y"), "b": ("x", "y")}):
        wait_until(lambda: {k: v for k, v in lora_running(fleet).items() if k in "ab"}
                   == {"a": ["x", "y"], "b": ["x", "y"]}, what="a and b full in the picker")
        served = Counter(ask(fleet, "new", strategy) for _ in range(12))
    assert served == {"c": 12}, served


def test_an_adapter_no_engine_serves_is_loaded_once_then_routed_there(fleet: Fleet) -> None:
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        first = Counter(pool.map(lambda _: ask(fleet, "fin"), range(6)))
    stats = {sim: loopback().get(f"{fleet.sim_url(sim)}/sim/stats").json() for sim in ADAPTERS}
    loaded = [sim for sim, s in stats.items() if "fin" in s["lora_adapters"]]
    assert sum(s["lora_load_calls"] for s in stats.values()) == 1, stats
    assert len(loaded) == 1 and first == {loaded[0]: 6}
    later = Counter(ask(fleet, "fin") for _ in range(6))
    assert later == {loaded[0]: 6}
    assert sum(loopback().get(f"{fleet.sim_url(sim)}/sim/stats").json()["lora_load_calls"]
               for sim in ADAPTERS) == 1
