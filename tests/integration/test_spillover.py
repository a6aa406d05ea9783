"""Spill-over end to end: real Envoy, the picker and simulated engines. While the pool's one
engine is at limits.per_worker_max, requests go to the overflow endpoint - with the key the
picker sets, which that engine requires - and back to the pool once its load falls."""

from __future__ import annotations

from picker_bench.loopback import loopback
from picker_bench.stack import SimSpec, local_fleet
from tests.integration.conftest import FAST_HEALTH, SIM_HEADER, total_in_flight
from tests.waiting import wait_until

MODEL = "pool-model"
CHAT = {"model": MODEL, "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}


def test_a_saturated_pool_spills_to_the_overflow_endpoint_and_returns_when_load_falls() -> None:
    sims = [SimSpec("pool", MODEL, ["--ttft-ms", "1", "--tpot-ms", "40"]),
            SimSpec("overflow", MODEL, ["--ttft-ms", "1", "--tpot-ms", "1"],
                    api_key="sk-overflow-only", worker={"overflow": True})]
    settings = {**FAST_HEALTH, "limits": {"per_worker_max": 1},
                "extproc": {"allow_unauthenticated_keys": True}}
    with local_fleet(sims, policy="least_load", picker_settings=settings) as fleet:
        before = loopback().post(f"{fleet.envoy_url}/v1/chat/completions", json=CHAT, timeout=10)
        long = {**CHAT, "max_tokens": 60, "stream": True}  # about 2.4 s on the pool engine
        with loopback().stream("POST", f"{fleet.envoy_url}/v1/chat/completions", json=long,
                               timeout=10) as held:
            lines = held.iter_lines()
            next(lines)  # under way: the pool's one slot is taken
            assert held.headers[SIM_HEADER] == "pool"
            during = [loopback().post(f"{fleet.envoy_url}/v1/chat/completions", json=CHAT,
                                      timeout=10) for _ in range(3)]
            for _ in lines:
                pass
        wait_until(lambda: total_in_flight(fleet) == 0, what="the held stream's release")
        after = loopback().post(f"{fleet.envoy_url}/v1/chat/completions", json=CHAT, timeout=10)
        metrics = loopback().get(f"{fleet.admin_url}/metrics").text
    assert before.status_code == 200 and before.headers[SIM_HEADER] == "pool"
    assert [r.status_code for r in during] == [200] * 3, [r.text for r in during]
    assert {r.headers[SIM_HEADER] for r in during} == {"overflow"}
    assert after.status_code == 200 and after.headers[SIM_HEADER] == "pool"
    assert f'llm_picker_spillovers_total{{model="{MODEL}",worker="overflow"}} 3.0' in metrics
